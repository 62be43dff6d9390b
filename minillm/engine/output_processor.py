"""From sampled token ids to what a caller sees: text, stop strings, logprobs, `RequestOutput`s.

The scheduler has already appended each sampled token to its sequence and ended the sequences
that hit EOS, a stop token or their length. Here each new token is detokenized; a stop string
found in the text ends its sequence too (the engine tells the scheduler), and the request's
outputs are built.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from minillm.engine.scheduler import SchedulerOutput
from minillm.engine.sequence import Sequence
from minillm.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from minillm.sampling import AllowedTokens, PromptLogprobs, SamplerOutput
from minillm.sampling_params import RequestOutputKind, SamplingParams
from minillm.structured_output import fill_bitmask


@dataclass
class Request:
    """A prompt and its `n` samples (sequences); samples 1..n-1 start as forks of sample 0."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    seqs: list[Sequence]
    prompt_logprobs: list[dict[int, Logprob] | None] = field(default_factory=lambda: [None])

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)


class OutputProcessor:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.requests: dict[str, Request] = {}  # unfinished requests, by id

    def add(self, request: Request) -> None:
        self.requests[request.request_id] = request

    def abort(self, request_id: str) -> Request | None:
        return self.requests.pop(request_id, None)

    def process_tokens(self, out: SchedulerOutput, sampled: SamplerOutput) -> list[Sequence]:
        """Book each sampled token: timings, logprobs, text. Returns the sequences still running
        whose text now holds a stop string (the scheduler must finish them)."""
        now = time.monotonic()
        for seq in out.seqs:
            metrics = self.requests[seq.request_id].metrics
            metrics.first_scheduled_time = metrics.first_scheduled_time or out.scheduled_time
        for request_id, scored in sampled.prompt_logprobs.items():
            self._record_prompt_logprobs(self.requests[request_id], scored)
        stopped = []
        for i, seq in enumerate(out.sampled_seqs):
            self._record_time(self.requests[seq.request_id].metrics, seq, now)
            if sampled.logprobs[i] is not None:
                self._record_logprobs(seq, sampled, i)
            if self._detokenize(seq) or self._advance_grammar(seq):
                stopped.append(seq)
        return stopped

    def allowed_tokens(self, seqs: list[Sequence], vocab_size: int) -> AllowedTokens | None:
        """The grammar masks of the sequences about to sample that have a grammar."""
        rows = [row for row, seq in enumerate(seqs) if seq.grammar is not None]
        if not rows:
            return None
        return AllowedTokens(rows, fill_bitmask([seqs[row].grammar for row in rows], vocab_size))

    def _advance_grammar(self, seq: Sequence) -> bool:
        """Feed the new token to the sequence's grammar; True if the grammar has ended (it
        accepted an end token) while the sequence still runs (e.g. with `ignore_eos`)."""
        if seq.grammar is None:
            return False
        seq.grammar.accept_token(seq.token_ids[-1])
        if seq.grammar.is_terminated() and not seq.is_finished:
            seq.detokenizer.flush()
            return True
        return False

    def _record_time(self, metrics: RequestMetrics, seq: Sequence, now: float) -> None:
        if metrics.first_token_time is None:
            metrics.first_token_time = now
        elif seq.index == 0:
            metrics.inter_token_latencies.append(now - metrics.last_token_time)
        metrics.last_token_time = now

    def _record_logprobs(self, seq: Sequence, sampled: SamplerOutput, i: int) -> None:
        token = seq.token_ids[-1]
        seq.cumulative_logprob = (seq.cumulative_logprob or 0.0) + sampled.logprobs[i]
        seq.logprobs.append(self._entries(token, sampled.logprobs[i], sampled.ranks[i],
                                          sampled.top_logprobs[i]))

    def _record_prompt_logprobs(self, request: Request, scored: PromptLogprobs) -> None:
        # A prompt recomputed after preemption is scored again: the new entries replace.
        del request.prompt_logprobs[scored.start:]
        tokens = request.prompt_token_ids[scored.start:]
        request.prompt_logprobs += [self._entries(*entry) for entry in zip(
            tokens, scored.logprobs, scored.ranks, scored.top_logprobs)]

    def _entries(self, token: int, logprob: float, rank: int,
                 top: dict[int, float] | None) -> dict[int, Logprob]:
        """The chosen token's logprob, then the top-k tokens' (rank 1 = most likely)."""
        entries = {token: Logprob(logprob, rank, self._decode(token))}
        for top_rank, (tid, lp) in enumerate((top or {}).items(), start=1):
            entries.setdefault(tid, Logprob(lp, top_rank, self._decode(tid)))
        return entries

    def _decode(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _detokenize(self, seq: Sequence) -> bool:
        """Add the new token's text; True if it completed a stop string and `seq` still runs."""
        detok = seq.detokenizer
        ended_by_token = seq.finish_reason == "stop"  # EOS or a stop token, just now
        stop_strings_count = (len(seq.output_token_ids) >= seq.params.min_tokens
                              and not ended_by_token)
        detok.add(seq.token_ids[-1], stop_strings_count)
        if detok.stop_string is not None:
            seq.stop_reason = detok.stop_string
            if seq.is_finished:  # it also reached its length: the stop string wins
                seq.finish_reason = "stop"
            return not seq.is_finished
        if seq.is_finished:
            detok.flush()  # a trailing partial character, if the last token left one
        return False

    def make_outputs(self, seqs: list[Sequence]) -> list[RequestOutput]:
        """The outputs of the requests these sequences belong to: finished requests, and the
        others if they asked for every step's output (streaming)."""
        outputs = []
        for request_id in dict.fromkeys(s.request_id for s in seqs):
            request = self.requests[request_id]
            if request.finished:
                request.metrics.finished_time = request.metrics.last_token_time
                del self.requests[request_id]
            elif request.params.output_kind != RequestOutputKind.CUMULATIVE:
                continue
            outputs.append(RequestOutput(
                request_id, request.prompt, request.prompt_token_ids,
                self._completions(request), request.finished,
                request.metrics, request.seqs[0].num_cached_tokens,
                request.prompt_logprobs if request.params.prompt_logprobs is not None else None))
        return outputs

    def _completions(self, request: Request) -> list[CompletionOutput]:
        """One output per sample; with `best_of` above n, the n samples with the highest
        cumulative logprob once all are finished (before that, the first n), numbered 0..n-1."""
        outputs = [self._completion(seq) for seq in request.seqs]
        if not request.params.ranks_samples:
            return outputs
        if request.finished:
            outputs.sort(key=lambda c: c.cumulative_logprob, reverse=True)
        return [dataclasses.replace(c, index=i) for i, c in enumerate(outputs[:request.params.n])]

    @staticmethod
    def _completion(seq: Sequence) -> CompletionOutput:
        logprobs = seq.logprobs if seq.params.logprobs is not None else None
        return CompletionOutput(seq.index, seq.detokenizer.visible_text(seq.is_finished),
                                seq.output_token_ids, seq.cumulative_logprob, logprobs,
                                seq.finish_reason, seq.stop_reason)
