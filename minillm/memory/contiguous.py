"""The fragmentation demo: KV memory as one contiguous arena, the way pre-paging servers used it.

Before PagedAttention, a serving system (FasterTransformer, Orca) gave every request one
contiguous stretch of KV memory, big enough for the longest the request could become: its prompt
plus the `max_tokens` it may generate. It had to: the attention kernel read a request's keys and
values as one dense `[seq_len, heads, head_dim]` array, and the output length is unknown until the
model stops.

Memory is measured here in *token slots* (one slot = one token's K and V in every layer; see
`minillm.memory.sizing` for the bytes). The arena has `capacity` slots. A request reserves
`size` consecutive slots; the gaps between reservations are *holes*. Where a new reservation goes
is the placement policy:

- **first fit**: the lowest-addressed hole that is big enough (fast, the classic choice);
- **best fit**: the smallest hole that is big enough (keeps big holes for big requests).

Three kinds of memory are wasted (chapter 3 draws them):

- **reservation**: reserved slots that will hold tokens the request has not generated yet;
- **internal fragmentation**: reserved slots the request will never use, because it stops before
  `max_tokens` (only known when it finishes; `memory_map` takes the final lengths to draw it);
- **external fragmentation**: free slots that cannot be used because they lie in holes too small
  for the request that waits next. Defined against a request size `r`: the sum of the lengths of
  the holes shorter than `r` (`external_fragmentation`). Free memory while nothing waits is just
  idle, not fragmentation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

# Codes of the memory map, one per token slot.
FREE = 0  # free and usable (or nothing waits)
TOKEN = 1  # holds a real token's K/V
RESERVED = 2  # reserved for a token the request will still generate
NEVER_USED = 3  # reserved, but the request finishes before reaching it (internal fragmentation)
EXTERNAL = 4  # free, in a hole too small for the waiting request (external fragmentation)
TAIL = 5  # paged: in a request's last block, not holding a token yet (internal fragmentation)
MAP_LABELS = ("free", "token", "reserved (future tokens)", "never used (internal frag.)",
              "unusable hole (external frag.)", "empty tail of last block (internal frag.)")

POLICIES = ("first_fit", "best_fit")


def find_holes(regions: Iterable[tuple[int, int]], capacity: int) -> list[tuple[int, int]]:
    """The free gaps of an arena of `capacity` slots, as `(start, length)` sorted by start.

    `regions` are the reserved `(start, size)` pairs, in any order, never overlapping.
    Gaps of length 0 are not holes.
    """
    holes, cursor = [], 0
    for start, size in sorted(regions):
        if start > cursor:
            holes.append((cursor, start - cursor))
        cursor = max(cursor, start + size)
    if cursor < capacity:
        holes.append((cursor, capacity - cursor))
    return holes


def first_fit(holes: list[tuple[int, int]], size: int) -> int | None:
    """Start of the lowest-addressed hole with at least `size` slots, or None if none has."""
    for start, length in sorted(holes):
        if length >= size:
            return start
    return None


def best_fit(holes: list[tuple[int, int]], size: int) -> int | None:
    """Start of the smallest hole with at least `size` slots (ties: lowest address), or None."""
    fitting = [(length, start) for start, length in holes if length >= size]
    return min(fitting)[1] if fitting else None


def external_fragmentation(holes: list[tuple[int, int]], request_size: int) -> int:
    """Free slots that a request of `request_size` slots cannot use: the holes shorter than it."""
    return sum(length for _, length in holes if length < request_size)


@dataclass
class Region:
    """One request's reservation: `size` slots from `start`, of which `used` hold tokens."""

    request_id: int
    start: int
    size: int
    used: int = 0


class ContiguousAllocator:
    """A `capacity`-slot arena where each request reserves one contiguous region up front.

    >>> arena = ContiguousAllocator(100, policy="first_fit")
    >>> arena.allocate("a", 30), arena.allocate("b", 50), arena.allocate("c", 30)
    (0, 30, None)
    >>> arena.free("a"); arena.holes()
    [(0, 30), (80, 20)]
    >>> arena.external_fragmentation(25)  # a 25-slot request fits in the first hole
    20
    """

    def __init__(self, capacity: int, policy: str = "first_fit"):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        self.capacity = capacity
        self.policy = policy
        self.regions: dict = {}  # request id -> Region

    # -- placement ---------------------------------------------------------------------------
    def holes(self) -> list[tuple[int, int]]:
        """The free gaps, `(start, length)` sorted by start."""
        return find_holes(((r.start, r.size) for r in self.regions.values()), self.capacity)

    def find_start(self, size: int) -> int | None:
        """Where the policy would place a reservation of `size` slots (None: no hole fits)."""
        place = first_fit if self.policy == "first_fit" else best_fit
        return place(self.holes(), size)

    def can_allocate(self, size: int) -> bool:
        return self.find_start(size) is not None

    def allocate(self, request_id, size: int) -> int | None:
        """Reserve `size` contiguous slots for `request_id`; returns the start, None if no hole fits."""
        if request_id in self.regions:
            raise ValueError(f"request {request_id!r} already holds a region")
        if size <= 0:
            raise ValueError("a reservation needs at least one slot")
        start = self.find_start(size)
        if start is not None:
            self.regions[request_id] = Region(request_id, start, size)
        return start

    def append(self, request_id, num_tokens: int = 1) -> None:
        """Record that `num_tokens` more tokens of the request now sit in its region."""
        region = self.regions[request_id]
        if region.used + num_tokens > region.size:
            raise ValueError(f"request {request_id!r} outgrew its reservation of {region.size}")
        region.used += num_tokens

    def free(self, request_id) -> None:
        """Give the request's whole region back."""
        del self.regions[request_id]

    # -- accounting --------------------------------------------------------------------------
    @property
    def num_reserved(self) -> int:
        return sum(r.size for r in self.regions.values())

    @property
    def num_tokens(self) -> int:
        return sum(r.used for r in self.regions.values())

    @property
    def num_free(self) -> int:
        return self.capacity - self.num_reserved

    @property
    def largest_hole(self) -> int:
        return max((length for _, length in self.holes()), default=0)

    def external_fragmentation(self, request_size: int) -> int:
        """Free slots in holes too small for a request of `request_size` slots."""
        return external_fragmentation(self.holes(), request_size)

    def memory_map(self, final_lengths: dict | None = None,
                   waiting_size: int | None = None) -> np.ndarray:
        """One code per slot (`FREE`, `TOKEN`, `RESERVED`, `NEVER_USED`, `EXTERNAL`).

        `final_lengths` (request id -> tokens it will hold when it finishes) splits the unused
        part of a reservation into `RESERVED` (future tokens) and `NEVER_USED`; without it, or for
        a request it does not name, all of it is `RESERVED`. `waiting_size` marks the holes too
        small for that request `EXTERNAL` (the same holes `external_fragmentation` counts).
        """
        final_lengths = final_lengths or {}
        codes = np.full(self.capacity, FREE, dtype=np.uint8)
        for r in self.regions.values():
            final = min(final_lengths.get(r.request_id, r.size), r.size)
            codes[r.start:r.start + r.used] = TOKEN
            codes[r.start + r.used:r.start + max(final, r.used)] = RESERVED
            codes[r.start + max(final, r.used):r.start + r.size] = NEVER_USED
        if waiting_size is not None:
            for start, length in self.holes():
                if length < waiting_size:
                    codes[start:start + length] = EXTERNAL
        return codes
