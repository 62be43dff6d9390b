"""What the engine reports after every step: the server's /metrics and the notebooks read it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    num_blocks: int
    # gauges: the state after the last step
    num_running: int = 0
    num_waiting: int = 0
    num_swapped: int = 0
    num_blocks_used: int = 0
    last_step_seconds: float = 0.0
    last_step_tokens: int = 0
    # counters since start-up (tokens, or events)
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_steps: int = 0

    @property
    def num_blocks_free(self) -> int:
        return self.num_blocks - self.num_blocks_used

    @property
    def kv_cache_usage(self) -> float:
        return self.num_blocks_used / self.num_blocks

    def record_idle(self, engine) -> None:
        self._read_queues(engine)
        self.last_step_seconds = self.last_step_tokens = 0

    def record_step(self, engine, batch, seconds: float) -> None:
        self._read_queues(engine)
        self.last_step_seconds, self.last_step_tokens = seconds, batch.num_tokens
        self.num_steps += 1

    def _read_queues(self, engine) -> None:
        scheduler, blocks = engine.scheduler, engine.block_manager
        self.num_running, self.num_waiting = len(scheduler.running), len(scheduler.waiting)
        self.num_swapped = len(scheduler.swapped)
        self.num_blocks_used = blocks.num_blocks - blocks.num_free_blocks
        self.prefix_cache_queries, self.prefix_cache_hits = blocks.prefix_queries, blocks.prefix_hits
        self.num_preemptions = scheduler.num_preemptions
