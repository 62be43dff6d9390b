"""Continuous batching: every step, decide which sequences run and how many tokens each gets.

One step's plan, under a budget of `max_num_batched_tokens` tokens:
1. running sequences first (decodes, and prefills already under way), highest priority first;
   when blocks run out, the lowest-priority (latest-arriving) running sequence is preempted;
2. swapped-out sequences come back when their blocks fit again;
3. waiting sequences are admitted while the budget, `max_num_seqs` and free blocks allow; a
   prompt longer than the remaining budget is prefilled in chunks over several steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from minillm.config import SchedulerConfig
from minillm.engine.block_manager import BlockManager
from minillm.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)  # tokens computed this step, per seq

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config, self.block_manager = config, block_manager
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.swapped: list[Sequence] = []
        self.num_preemptions = 0

    def order(self, seq: Sequence):
        """Sort key: who runs first (and who is preempted last)."""
        if self.config.policy == "priority":
            return seq.priority, seq.arrival_time, seq.seq_id
        return seq.arrival_time, seq.seq_id

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """A sequence forked from a running one (parallel samples) runs from the next step."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        preemptions = self.num_preemptions
        budget = self._schedule_running(batch, budget)
        if self.num_preemptions == preemptions:  # memory is tight: admit nothing new this step
            self._swap_in()  # they run from the next step on
            self._schedule_waiting(batch, budget)
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        for seq in sorted(self.running, key=self.order):
            if budget == 0:
                break
            if seq.status != SequenceStatus.RUNNING:
                continue  # preempted as a victim earlier in this loop
            num_new = min(seq.num_uncomputed_tokens, budget)
            if self._allocate_or_preempt(seq, num_new, batch):
                batch.add(seq, num_new)
                budget -= num_new
        return budget

    def _allocate_or_preempt(self, seq: Sequence, num_new: int, batch: ScheduledBatch) -> bool:
        """Preempt lower-priority sequences until `seq` fits; False if `seq` itself had to go."""
        while not self.block_manager.allocate(seq, num_new):
            victims = [s for s in self.running if s not in batch.seqs]
            victim = max(victims, key=self.order)
            self.preempt(victim)
            if victim is seq:
                return False
        return True

    def preempt(self, seq: Sequence) -> None:
        """Swap the sequence's blocks to the CPU, or drop them and recompute it later."""
        self.running.remove(seq)
        self.num_preemptions += 1
        if self.config.preemption_mode == "swap" and self.block_manager.can_swap_out(seq):
            self.block_manager.swap_out(seq)
            seq.status = SequenceStatus.SWAPPED
            self.swapped.append(seq)
        else:
            self.block_manager.free(seq)
            seq.reset_for_recompute()
            self.waiting.append(seq)

    def _swap_in(self) -> None:
        for seq in sorted(self.swapped, key=self.order):
            if not self.block_manager.can_swap_in(seq):
                break
            self.block_manager.swap_in(seq)
            self.swapped.remove(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        for seq in sorted(self.waiting, key=self.order):
            if budget == 0 or len(self.running) >= self.config.max_num_seqs or self.swapped:
                break
            self.block_manager.reuse_cached_prefix(seq)
            num_new = min(seq.num_uncomputed_tokens, budget)
            if not self.block_manager.allocate(seq, num_new):
                self.block_manager.free(seq)  # let go of the cached prefix it adopted
                seq.reset_for_recompute()
                break
            self.waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.add(seq, num_new)
            budget -= num_new

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take a sequence out of whichever queue holds it and give back its memory."""
        seq.finish_reason = reason
        if seq.status == SequenceStatus.SWAPPED:
            self.swapped.remove(seq)
            self.block_manager.free_swapped(seq)
        else:
            (self.running if seq.status == SequenceStatus.RUNNING else self.waiting).remove(seq)
            self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
