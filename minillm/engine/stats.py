"""What the engine reports after every step: the server's /metrics and the notebooks read it.

The scheduler produces its part (`SchedulerStats`) once per step; the engine adds the step's
size and time.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from minillm.engine.scheduler import SchedulerStats


@dataclass
class EngineStats(SchedulerStats):
    num_blocks: int = 0
    last_step_seconds: float = 0.0  # 0 after a step that ran nothing
    last_step_tokens: int = 0
    num_steps: int = 0  # steps that ran the model
    step_tokens: Counter = field(default_factory=Counter)  # steps that ran, by their tokens

    @property
    def num_blocks_free(self) -> int:
        return self.num_blocks - self.num_blocks_used

    @property
    def kv_cache_usage(self) -> float:
        return self.num_blocks_used / self.num_blocks

    def record(self, scheduler: SchedulerStats, num_tokens: int, seconds: float) -> None:
        """Take the scheduler's figures after a step of `num_tokens` tokens."""
        vars(self).update(vars(scheduler))
        self.last_step_tokens, self.last_step_seconds = num_tokens, seconds
        self.num_steps += num_tokens > 0
        if num_tokens:
            self.step_tokens[num_tokens] += 1
