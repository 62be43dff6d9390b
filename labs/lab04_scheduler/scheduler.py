"""Lab 4: the scheduler, one step's choice. Fill in the stubs, then run `make grade LAB=lab04`.

Every step the engine asks `Scheduler.schedule()` which sequences run and how many tokens each
computes, under two limits from `EngineConfig`: `max_num_batched_tokens` tokens in the step (the
*budget*: one per decode, a prompt's tokens for a prefill) and `max_num_seqs` sequences running
at once. The answer is a `SchedulerOutput` (given): `out.add(seq, num_new_tokens)` puts a
sequence in the batch, in the order you call it.

A sequence (`minillm/engine/sequence.py`) has `num_tokens`, `num_computed_tokens` (tokens whose
K/V are in the cache), `num_uncomputed_tokens` (the difference: the rest of the prompt for a
prefill, 1 for a decode), a `status` (WAITING, RUNNING, SWAPPED) and a `block_table`. The
scheduler keeps three queues, `self.waiting`, `self.running` and `self.swapped`; `self.order` is
the sort key of who runs first (and who is preempted last): arrival time under "fcfs",
`(priority, arrival time)` under "priority". `self.block_manager` is lab 3's allocator with
chapter 8's extras: `allocate(seq, n)` grows a block table for `n` more tokens or returns False,
changing nothing; `free(seq)` gives its blocks back; `can_swap_out(seq)`/`swap_out(seq)` move
them to the CPU pool.

Your class inherits the rest from minillm's (`add`, `_swap_in`, `_allocate_prompt`,
`update_from_output`, `finish`, ...): fill in the five methods below, each keeps the reference's
signature (`minillm/engine/scheduler.py`). Calling minillm's own version of a task's method
(`super()`) is not a solution, and the tests refuse it.
"""
from __future__ import annotations

from minillm.engine import scheduler as minillm_scheduler
from minillm.engine.scheduler import SchedulerOutput
from minillm.engine.sequence import Sequence, SequenceStatus


class Scheduler(minillm_scheduler.Scheduler):
    def preempt(self, seq: Sequence) -> None:
        """Take the running `seq` out of the batch to free its memory.

        Remove it from `self.running` and count it in `self.stats.num_preemptions`. Then:
        - `preemption_mode == "swap"` and `self.block_manager.can_swap_out(seq)`: swap its blocks
          out (`block_manager.swap_out`), set its status to SWAPPED, append it to `self.swapped`;
        - otherwise (recompute): give its blocks back (`block_manager.free`), forget what was
          computed (`seq.reset_for_recompute()`: no blocks, nothing computed, status WAITING) and
          append it to `self.waiting`; it will prefill its prompt and its output so far again.
        """
        raise NotImplementedError("Task 4.1: preempt a running sequence")

    def _allocate_or_preempt(self, seq: Sequence, num_new: int, out: SchedulerOutput) -> bool:
        """Allocate blocks for `num_new` more tokens of the running `seq`, preempting others
        until they fit.

        While `self.block_manager.allocate(seq, num_new)` fails, preempt the victim: of the
        running sequences not already in this step's batch (`out.seqs`), the one that runs last
        in `self.order` (the newest, or the lowest priority) - possibly `seq` itself. Return True
        once `seq` has its blocks, False if `seq` was the victim.
        """
        raise NotImplementedError("Task 4.2: make room for a sequence, or preempt it")

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        """Schedule the running sequences, first in `self.order` first; return the budget left.

        Each gets its next `min(tokens it has not computed, budget)` tokens: 1 for a decode, the
        rest of its prompt, or a chunk of it, for a prefill under way. Give it blocks with
        `_allocate_or_preempt` and, if that succeeded, add it to `out` and spend its tokens from
        the budget. Stop once the budget is spent; skip a sequence preempted earlier in this
        loop (its status is no longer RUNNING).
        """
        raise NotImplementedError("Task 4.3: schedule the running sequences")

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        """Admit waiting sequences, first in `self.order` first, with the budget left.

        Stop at the first that cannot come in: the budget is spent, `max_num_seqs` sequences
        already run, a swapped-out sequence is waiting to come back (it has precedence), or
        `self._allocate_prompt(seq, budget)` (given) returns None (not enough free blocks: a
        later, smaller prompt must not jump the queue). Otherwise it returned the number of
        tokens `seq` computes this step: move `seq` from `waiting` to `running` with status
        RUNNING, add it to `out` and spend the tokens.
        """
        raise NotImplementedError("Task 4.4: admit waiting sequences")

    def schedule(self) -> SchedulerOutput:
        """Plan one step.

        Start from an empty `SchedulerOutput` and the whole budget
        (`self.config.max_num_batched_tokens`). The running sequences go first (decodes never
        wait behind new prompts). If that preempted nobody, bring swapped-out sequences back
        (`self._swap_in()`, given: they run from the next step on), then admit waiting ones with
        the budget left; if it preempted someone, memory is tight: admit nothing new this step.
        Last, hand the block manager's recorded swaps and copies to the runner:
        `out.moves = self.block_manager.take_moves()`.
        """
        raise NotImplementedError("Task 4.5: one step of continuous batching")
