"""Continuous batching: every step, decide which sequences run and how many tokens each gets.

`schedule()` plans one step under a budget of `max_num_batched_tokens` tokens and
`max_num_seqs` sequences:
1. running sequences first (decodes, and prefills already under way), highest priority first;
   when blocks run out, the lowest-priority (latest-arriving) running sequence is preempted;
2. swapped-out sequences come back when their blocks fit again;
3. waiting sequences are admitted while the budget, the seats and free blocks allow; a prompt
   longer than the remaining budget is prefilled in chunks over several steps.

After the model runner has run the plan, `update_from_output()` books the results: computed
tokens, newly full blocks into the prefix cache, parallel samples forked, sampled tokens
appended, and sequences that stop are finished (their blocks freed).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from minillm.config import EngineConfig
from minillm.engine.block_manager import BlockManager, BlockMoves
from minillm.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    """One step's plan: what the model runner computes, and who gets a new token."""

    seqs: list[Sequence] = field(default_factory=list)  # run this step, in batch order
    num_new_tokens: list[int] = field(default_factory=list)  # tokens computed this step, per seq
    sampled_seqs: list[Sequence] = field(default_factory=list)  # each gets one token this step
    sample_rows: list[int] = field(default_factory=list)  # ...from the logits of seqs[row]
    moves: BlockMoves = field(default_factory=BlockMoves)  # swaps and copies, before the forward
    scheduled_time: float = field(default_factory=time.monotonic)  # a request's queue time ends

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        """Run `num_new_tokens` of `seq`; if they complete it, it (and its forks) sample."""
        row = len(self.seqs)
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        if seq.num_computed_tokens + num_new_tokens == seq.num_tokens:
            for sampled in [seq, *seq.forks]:  # parallel samples draw from the prompt's logits
                self.sampled_seqs.append(sampled)
                self.sample_rows.append(row)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)


@dataclass
class SchedulerStats:
    """The scheduler's state after a step, and its counters since start-up."""

    num_running: int = 0
    num_waiting: int = 0
    num_swapped: int = 0
    num_blocks_used: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache (admissions)
    prefix_cache_hits: int = 0  # of those, found there
    num_preemptions: int = 0
    prompt_tokens: int = 0  # prompts that got their first output token
    generation_tokens: int = 0


def check_stop(seq: Sequence, eos_token_ids: list[int],
               max_model_len: int) -> tuple[str, int | None] | None:
    """Whether the token just appended ends `seq`: (finish reason, stop token) or None. Stop
    strings are the output processor's: they need the text."""
    params, token, num_out = seq.params, seq.token_ids[-1], len(seq.output_token_ids)
    if num_out >= params.min_tokens:
        if token in params.stop_token_ids:
            return "stop", token
        if token in eos_token_ids and not params.ignore_eos:
            return "stop", None
    if num_out == params.max_tokens or seq.num_tokens >= max_model_len:
        return "length", None
    return None


def wants_prompt_logprobs(seq: Sequence) -> bool:
    """Such a request computes its whole prompt, as in vLLM: no prefix-cache reuse."""
    return seq.params is not None and seq.params.prompt_logprobs is not None


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager,
                 eos_token_ids: list[int], max_model_len: int):
        self.config, self.block_manager = config, block_manager
        self.eos_token_ids, self.max_model_len = eos_token_ids, max_model_len
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.swapped: list[Sequence] = []
        self.stats = SchedulerStats()

    def order(self, seq: Sequence):
        """Sort key: who runs first (and who is preempted last)."""
        if self.config.scheduling_policy == "priority":
            return seq.priority, seq.arrival_time, seq.seq_id
        return seq.arrival_time, seq.seq_id

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    # -- schedule ------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """Plan one step: the running sequences first (decodes never wait behind new prompts),
        then, unless that preempted someone (memory is tight), swapped-out sequences back and
        waiting ones admitted with what is left of the token budget."""
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        preemptions = self.stats.num_preemptions
        budget = self._schedule_running(out, budget)
        if self.stats.num_preemptions == preemptions:
            self._swap_in()  # they run from the next step on
            self._schedule_waiting(out, budget)
        out.moves = self.block_manager.take_moves()
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        """Give each running sequence, first in `order` first, its next tokens: one for a decode,
        the rest of its prompt (or as much as the budget allows: a chunk) for a prefill under
        way. Returns the budget left."""
        for seq in sorted(self.running, key=self.order):
            if budget == 0:
                break
            if seq.status != SequenceStatus.RUNNING:
                continue  # preempted as a victim earlier in this loop
            num_new = min(seq.num_uncomputed_tokens, budget)
            if self._allocate_or_preempt(seq, num_new, out):
                out.add(seq, num_new)
                budget -= num_new
        return budget

    def _allocate_or_preempt(self, seq: Sequence, num_new: int, out: SchedulerOutput) -> bool:
        """Preempt lower-priority sequences until `seq` fits; False if `seq` itself had to go."""
        while not self.block_manager.allocate(seq, num_new):
            victim = max((s for s in self.running if s not in out.seqs), key=self.order)
            self.preempt(victim)
            if victim is seq:
                return False
        return True

    def preempt(self, seq: Sequence) -> None:
        """Swap the sequence's blocks to the CPU, or drop them and recompute it later."""
        self.running.remove(seq)
        self.stats.num_preemptions += 1
        if self.config.preemption_mode == "swap" and self.block_manager.can_swap_out(seq):
            self.block_manager.swap_out(seq)
            seq.status = SequenceStatus.SWAPPED
            self.swapped.append(seq)
        else:
            self.block_manager.free(seq)
            seq.reset_for_recompute()
            self.waiting.append(seq)

    def _swap_in(self) -> None:
        """Bring swapped-out sequences back, first in `order` first, while their blocks fit."""
        for seq in sorted(self.swapped, key=self.order):
            if not self.block_manager.can_swap_in(seq):
                break
            self.block_manager.swap_in(seq)
            self.swapped.remove(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        """Admit waiting sequences, first in `order` first, while the budget, the `max_num_seqs`
        seats and the free blocks allow; none while a swapped-out sequence waits to come back."""
        for seq in sorted(self.waiting, key=self.order):
            if budget == 0 or len(self.running) >= self.config.max_num_seqs or self.swapped:
                break
            num_new = self._allocate_prompt(seq, budget)
            if num_new is None:
                break
            self.waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.add(seq, num_new)
            budget -= num_new

    def _allocate_prompt(self, seq: Sequence, budget: int) -> int | None:
        """Blocks for a waiting sequence's next prompt tokens, after it adopts its prefix from the
        prefix cache: how many tokens it computes this step (a chunk when the budget is short),
        or None, with nothing changed, when the blocks are not free."""
        if not wants_prompt_logprobs(seq):  # a cached block has no logits to score
            self.block_manager.reuse_cached_prefix(seq)
        num_new = min(seq.num_uncomputed_tokens, budget)
        if not self.block_manager.allocate(seq, num_new):
            self.block_manager.free(seq)  # let go of the cached prefix it adopted
            seq.reset_for_recompute()
            return None
        if self.block_manager.enable_prefix_caching and not wants_prompt_logprobs(seq):
            # counted once, when admitted
            self.stats.prefix_cache_queries += seq.num_tokens
            self.stats.prefix_cache_hits += seq.num_cached_tokens
        return num_new

    # -- after the forward ---------------------------------------------------------------------
    def update_from_output(self, out: SchedulerOutput, token_ids: list[int]) -> None:
        """Book a step the runner has run; `token_ids[i]` was sampled for `out.sampled_seqs[i]`."""
        self.block_manager.release_cpu_blocks(out.moves.swap_in)  # their copies have run
        for seq, num_new in zip(out.seqs, out.num_new_tokens):
            seq.num_computed_tokens += num_new
            self.block_manager.cache_full_blocks(seq)
            if seq.forks and seq.num_computed_tokens == seq.num_tokens:
                self._fork(seq)
        for seq, token in zip(out.sampled_seqs, token_ids):
            seq.append_token(token)
            if len(seq.output_token_ids) == 1 and seq.index == 0:
                self.stats.prompt_tokens += seq.num_prompt_tokens
            stop = check_stop(seq, self.eos_token_ids, self.max_model_len)
            if stop is not None:
                seq.stop_reason = stop[1]
                self.finish(seq, stop[0])
        self.stats.generation_tokens += len(token_ids)

    def _fork(self, parent: Sequence) -> None:
        """The prompt is computed: the other samples share its blocks and run from the next step
        on, as many as `max_num_seqs` lets run; the rest wait, like sequences preempted by
        recompute (their prompt's full blocks are found again in the prefix cache)."""
        for child in parent.forks:
            if len(self.running) < self.config.max_num_seqs:
                self.block_manager.fork(parent, child)
                child.status = SequenceStatus.RUNNING
                self.running.append(child)
            else:
                self.add(child)
        parent.forks = []

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take a sequence (and samples not yet forked from it) out of whichever queue holds it,
        and give back its memory."""
        queue = {SequenceStatus.RUNNING: self.running, SequenceStatus.WAITING: self.waiting,
                 SequenceStatus.SWAPPED: self.swapped}[seq.status]
        queue.remove(seq)
        if seq.status == SequenceStatus.SWAPPED:
            self.block_manager.free_swapped(seq)
        else:
            self.block_manager.free(seq)
        for s in [seq, *seq.forks]:
            s.finish_reason, s.status = reason, SequenceStatus.FINISHED
        seq.forks = []

    def make_stats(self) -> SchedulerStats:
        """The statistics after this step (a copy: the server reads it from another thread)."""
        self.stats.num_running, self.stats.num_waiting = len(self.running), len(self.waiting)
        self.stats.num_swapped = len(self.swapped)
        blocks = self.block_manager
        self.stats.num_blocks_used = blocks.num_blocks - blocks.num_free_blocks
        return SchedulerStats(**vars(self.stats))
