"""The engine loop a server drives: `add_request`, `step`, `abort_request`.

    step():  Scheduler.schedule() ─► ModelRunner.run() ─► sample() ─► append, detokenize, stop?
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from minillm.attention import get_backend
from minillm.config import EngineConfig
from minillm.engine.block_manager import BlockManager, blocks_for
from minillm.engine.detokenizer import IncrementalDetokenizer, find_stop, stop_holdback
from minillm.engine.model_runner import ModelRunner, PagedKVCache
from minillm.engine.scheduler import Scheduler
from minillm.engine.sequence import Sequence
from minillm.engine.stats import EngineStats
from minillm.model import load_model, load_tokenizer
from minillm.model.packed_linear import can_pack, pack_linear_layers
from minillm.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from minillm.sampling import sample
from minillm.sampling_params import RequestOutputKind, SamplingParams

CPU_KV_CACHE_BYTES = 1 << 30


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    seqs: list[Sequence] = field(default_factory=list)  # grows to n after the prefill
    detokenizers: dict[int, IncrementalDetokenizer] = field(default_factory=dict)
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    logprobs: dict[int, list] = field(default_factory=dict)
    cumulative_logprob: dict[int, float | None] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return len(self.seqs) == self.params.n and all(s.is_finished for s in self.seqs)


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        device = config.device if config.device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.model_path = str(config.model or default_model())
        self.model = load_model(self.model_path, config.dtype, self.device)
        if can_pack(self.model):  # on a CPU: oneDNN linear layers, packed once
            pack_linear_layers(self.model)
        self.tokenizer = load_tokenizer(self.model_path)
        cfg = self.model.config
        self.max_model_len = config.max_model_len or min(cfg.max_position_embeddings, 4096)
        self.eos_token_ids = cfg.eos_token_ids or [self.tokenizer.eos_token_id]
        num_blocks, num_cpu_blocks = self._count_blocks()
        self.block_manager = BlockManager(num_blocks, config.block_size,
                                          config.enable_prefix_caching, num_cpu_blocks)
        self.scheduler = Scheduler(config.scheduler, self.block_manager)
        self.backend = get_backend(config.attention_backend, self.device,
                                   dtype=self.model.dtype, head_dim=cfg.head_dim,
                                   block_size=config.block_size)
        self.cache = PagedKVCache(self.model, num_blocks, config.block_size, num_cpu_blocks,
                                  self.backend)
        self.runner = ModelRunner(self.model, self.cache, config.block_size)
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats(num_blocks=num_blocks)
        self._seed_source = torch.Generator().manual_seed(config.seed)

    # -- memory --------------------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        """K and V of one block, over all layers."""
        cfg = self.model.config
        elem = self.model.dtype.itemsize
        return 2 * cfg.num_layers * self.config.block_size * cfg.num_kv_heads * cfg.head_dim * elem

    def _count_blocks(self) -> tuple[int, int]:
        cfg = self.config
        most_useful = cfg.scheduler.max_num_seqs * blocks_for(self.max_model_len, cfg.block_size)
        if cfg.num_gpu_blocks_override:
            num_blocks = cfg.num_gpu_blocks_override
        else:
            num_blocks = min(self._kv_budget() // self.block_bytes, most_useful)
        if num_blocks < blocks_for(self.max_model_len, cfg.block_size):
            raise ValueError(f"{num_blocks} KV blocks of {cfg.block_size} tokens cannot hold one "
                             f"sequence of max_model_len={self.max_model_len} tokens: give the "
                             f"KV cache more memory or lower max_model_len")
        return num_blocks, int(cfg.swap_space * (1 << 30)) // self.block_bytes

    def _kv_budget(self) -> int:
        """On GPU: `gpu_memory_utilization` of the card minus what is already used (weights);
        on CPU an explicit budget."""
        if self.config.kv_cache_memory_bytes:
            return self.config.kv_cache_memory_bytes
        if self.device.type != "cuda":
            return CPU_KV_CACHE_BYTES
        free, total = torch.cuda.mem_get_info(self.device)
        activations = self.config.scheduler.max_num_batched_tokens * (
            self.model.config.vocab_size + 16 * self.model.config.hidden_size) * 4  # rough bound
        return int(total * self.config.gpu_memory_utilization - (total - free) - activations)

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | dict | list[int],
                    params: SamplingParams | None = None, priority: int = 0,
                    arrival_time: float | None = None) -> None:
        """Queue a request; a bad one raises ValueError and leaves the engine untouched."""
        params = params or SamplingParams()
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, ids = self._tokenize(prompt)
        self._validate(ids)
        request = Request(request_id, text, ids, params,
                          RequestMetrics(arrival_time or time.monotonic()))
        seq = Sequence(ids, self.config.block_size, params, request_id, 0, priority,
                       request.metrics.arrival_time)
        self._attach(request, seq)
        self.requests[request_id] = request
        self.scheduler.add(seq)

    def _tokenize(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return prompt.get("prompt"), list(prompt["prompt_token_ids"])
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return None, list(prompt)
        raise ValueError("a prompt is a string, a list of token ids or "
                         "{'prompt_token_ids': [...]}")

    def _validate(self, ids: list[int]) -> None:
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt is {len(ids)} tokens long; this model's maximum "
                             f"context length is {self.max_model_len} tokens, prompt and output "
                             f"together")
        vocab = self.model.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")

    def _attach(self, request: Request, seq: Sequence) -> None:
        """Give a sequence its own detokenizer and random generator (seed + index if seeded)."""
        params = request.params
        seed = (params.seed + seq.index if params.seed is not None
                else int(torch.randint(0, 2**62, (1,), generator=self._seed_source)))
        request.seqs.append(seq)
        request.generators[seq.seq_id] = torch.Generator(self.device).manual_seed(seed)
        request.detokenizers[seq.seq_id] = IncrementalDetokenizer(
            self.tokenizer, request.prompt_token_ids, params.skip_special_tokens)
        request.logprobs[seq.seq_id] = []
        request.cumulative_logprob[seq.seq_id] = None if params.logprobs is None else 0.0

    def abort_request(self, request_id: str) -> None:
        """Stop a request wherever it is (waiting, running, swapped) and free its blocks."""
        request = self.requests.pop(request_id, None)
        for seq in request.seqs if request else []:
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One iteration of continuous batching. Returns the requests that made progress."""
        started = time.perf_counter()
        batch = self.scheduler.schedule()
        if not batch.seqs:
            self.stats.record_idle(self)
            return []
        self.cache.move_blocks(*self.block_manager.take_pending_ops())
        done, rows, end = [], [], 0  # sequences whose every token will be computed: they sample
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            end += n
            if seq.num_computed_tokens + n == seq.num_tokens:
                done.append(seq)
                rows.append(end - 1)
            metrics = self.requests[seq.request_id].metrics
            metrics.first_scheduled_time = metrics.first_scheduled_time or time.monotonic()
        logits = self.runner.run(batch, rows)
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.block_manager.cache_full_blocks(seq)
        now = time.monotonic()
        touched = [self.requests[rid] for rid in self._sample_and_append(done, logits, now)]
        self.stats.record_step(self, batch, time.perf_counter() - started)
        return [self._output(r) for r in touched
                if r.finished or r.params.output_kind == RequestOutputKind.CUMULATIVE]

    def _sample_and_append(self, done: list[Sequence], logits: torch.Tensor, now: float):
        seqs, row_of_seq = [], []
        for row, seq in enumerate(done):
            for s in self._fork_parallel_samples(seq):
                seqs.append(s)
                row_of_seq.append(row)
        if not seqs:
            return []
        if len(seqs) > len(done):  # parallel samples were forked: their rows repeat the parent's
            logits = logits[row_of_seq]
        requests = [self.requests[s.request_id] for s in seqs]
        # Token histories only for the rows whose sampling reads them: copying every row's
        # tokens each step would cost more than the sampling itself.
        history = [s.params.uses_token_history for s in seqs]
        prompts = [s.token_ids[:s.num_prompt_tokens] if h else [] for s, h in zip(seqs, history)]
        outputs = [s.output_token_ids if h else [] for s, h in zip(seqs, history)]
        out = sample(logits, [s.params for s in seqs], prompts, outputs,
                     [r.generators[s.seq_id] for r, s in zip(requests, seqs)], self.eos_token_ids)
        for i, (seq, request) in enumerate(zip(seqs, requests)):
            entries = None if seq.params.logprobs is None else self._logprobs(
                out.token_ids[i], out.logprobs[i], out.top_logprobs[i], logits[i])
            self._append(request, seq, out.token_ids[i], out.logprobs[i], entries, now)
        return list(dict.fromkeys(s.request_id for s in seqs))

    def _fork_parallel_samples(self, seq: Sequence) -> list[Sequence]:
        """After the prompt of an `n > 1` request: n-1 children share its blocks (copy-on-write)."""
        request = self.requests[seq.request_id]
        if len(request.seqs) == request.params.n:
            return [seq]
        children = []
        for index in range(1, request.params.n):
            child = Sequence(seq.token_ids, self.config.block_size, seq.params, seq.request_id,
                             index, seq.priority, seq.arrival_time)
            self.block_manager.fork(seq, child)
            self.scheduler.add_running(child)
            self._attach(request, child)
            children.append(child)
        return [seq, *children]

    def _append(self, request: Request, seq: Sequence, token: int, logprob: float | None,
                logprob_entries: dict[int, Logprob] | None, now: float) -> None:
        metrics = request.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = now
            self.stats.prompt_tokens += len(request.prompt_token_ids)
        elif seq.index == 0:
            metrics.inter_token_latencies.append(now - metrics.last_token_time)
        metrics.last_token_time = now
        seq.append_token(token)
        self.stats.generation_tokens += 1
        detok = request.detokenizers[seq.seq_id]
        new_text = detok.add(token)
        if logprob is not None:
            request.cumulative_logprob[seq.seq_id] += logprob
        if logprob_entries is not None:
            request.logprobs[seq.seq_id].append(logprob_entries)
        reason = self._stop_reason(seq, token, detok, len(new_text))
        if reason is not None:
            if not isinstance(seq.stop_reason, str):
                detok.flush()  # a trailing partial character, if the last token left one
            self.scheduler.finish(seq, reason)
            if request.finished:
                metrics.finished_time = now

    def _stop_reason(self, seq: Sequence, token: int, detok, new_text_len: int) -> str | None:
        params, num_out = seq.params, len(seq.output_token_ids)
        if num_out >= params.min_tokens:
            if token in params.stop_token_ids:
                seq.stop_reason = token
                return "stop"
            if token in self.eos_token_ids and not params.ignore_eos:
                return "stop"
            at = find_stop(detok.text, new_text_len, params.stop) if params.stop else None
            if at is not None:
                seq.stop_reason = next(s for s in params.stop if detok.text.startswith(s, at))
                detok.text = detok.text[:at]
                return "stop"
        if num_out == params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _logprobs(self, token: int, logprob: float, top: dict | None,
                  logits: torch.Tensor) -> dict[int, Logprob]:
        raw = torch.log_softmax(logits, dim=-1)
        rank = int((raw > raw[token]).sum()) + 1
        entries = {token: Logprob(logprob, rank, self.tokenizer.decode([token]))}
        for r, (tid, lp) in enumerate((top or {}).items(), start=1):
            entries.setdefault(tid, Logprob(lp, r, self.tokenizer.decode([tid])))
        return entries

    # -- outputs -------------------------------------------------------------------------------
    def _output(self, request: Request) -> RequestOutput:
        finished = request.finished
        if finished:
            self.requests.pop(request.request_id)
        completions = [self._completion(request, seq) for seq in request.seqs]
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids,
                             completions, finished, request.metrics,
                             request.seqs[0].num_cached_tokens)

    def _completion(self, request: Request, seq: Sequence) -> CompletionOutput:
        text = request.detokenizers[seq.seq_id].text
        if not seq.is_finished and seq.params.stop:  # hold back a possible stop string's start
            text = text[:len(text) - stop_holdback(text, seq.params.stop)]
        logprobs = request.logprobs[seq.seq_id] if seq.params.logprobs is not None else None
        return CompletionOutput(seq.index, text, seq.output_token_ids,
                                request.cumulative_logprob[seq.seq_id], logprobs,
                                seq.finish_reason, seq.stop_reason)


def default_model() -> str:
    from minillm.assets import DEFAULT_MODEL
    return str(DEFAULT_MODEL)
