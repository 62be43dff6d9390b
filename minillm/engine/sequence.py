"""A sequence: the tokens of one sample of one request, and where its KV cache lives.

    WAITING ──schedule──► RUNNING ──finish──► FINISHED
       ▲                   │   ▲
       └──preempt (recompute)   └──swap in── SWAPPED ◄──preempt (swap)
"""
from __future__ import annotations

import itertools
from enum import Enum, auto


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    SWAPPED = auto()
    FINISHED = auto()


class Sequence:
    _ids = itertools.count()

    def __init__(self, token_ids: list[int], block_size: int = 16, params=None,
                 request_id: str = "", index: int = 0, priority: int = 0,
                 arrival_time: float = 0.0):
        self.seq_id = next(Sequence._ids)
        self.request_id, self.index = request_id, index  # the index-th of the request's n samples
        self.params = params  # SamplingParams
        self.priority, self.arrival_time = priority, arrival_time  # lower priority runs sooner
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.block_size = block_size
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.num_cached_tokens = 0  # of those, found in the prefix cache at admission
        self.block_table: list[int] = []  # logical block i lives in physical block block_table[i]
        self.block_hashes: list[int] = []  # prefix-cache keys of the full blocks hashed so far
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None  # "stop" | "length" | "abort"
        self.stop_reason: int | str | None = None  # the stop token or string that ended it

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    def block_tokens(self, i: int) -> list[int]:
        """The tokens that logical block `i` holds."""
        return self.token_ids[i * self.block_size:(i + 1) * self.block_size]

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def reset_for_recompute(self) -> None:
        """After preemption by recompute: the cache is gone, every token is prefilled again."""
        self.num_computed_tokens = 0
        self.block_table, self.block_hashes = [], []
        self.status = SequenceStatus.WAITING
