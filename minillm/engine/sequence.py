"""A sequence: one sample of one request - its tokens, where its KV cache lives, and the state
that turns its tokens into output (its random generator, detokenizer, grammar matcher, logprobs).

    WAITING ──schedule──► RUNNING ──finish──► FINISHED
       ▲                   │   ▲
       └──preempt (recompute)   └──swap in── SWAPPED ◄──preempt (swap)

A request with `n > 1` samples starts as one sequence; its other n - 1 wait in `forks` until
the prompt is computed, then share the prompt's blocks (copy-on-write) and run on their own.
"""
from __future__ import annotations

import itertools
from enum import Enum, auto

import torch


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    SWAPPED = auto()
    FINISHED = auto()


class Sequence:
    _ids = itertools.count()

    def __init__(self, token_ids: list[int], block_size: int = 16, params=None,
                 request_id: str = "", index: int = 0, priority: int = 0,
                 arrival_time: float = 0.0, generator: torch.Generator | None = None,
                 detokenizer=None):
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
        self.block_hashes: list[bytes] = []  # prefix-cache keys of the full blocks hashed so far
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None  # "stop" | "length" | "abort"
        self.stop_reason: int | str | None = None  # the stop token or string that ended it
        self.forks: list[Sequence] = []  # the request's other samples, until the prompt is done
        # Output state: the sampler draws from `generator` alone (seeded requests reproduce);
        # the output processor grows the text and the logprobs.
        self.generator, self.detokenizer = generator, detokenizer
        self.grammar = None  # structured outputs: the grammar matcher of this sample
        self.logprobs: list[dict] = []  # per output token, when params.logprobs is set
        self.cumulative_logprob: float | None = None

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
