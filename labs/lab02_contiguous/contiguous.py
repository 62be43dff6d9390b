"""Lab 2: the contiguous KV allocator of pre-paging servers. Fill in the stubs, then run
`make grade LAB=lab02`.

Memory is counted in token slots. Each request reserves ONE contiguous region of
`prompt + max_tokens` slots. Regions are `(start, size)` pairs; the gaps between them are holes,
also `(start, length)` pairs. The reference is `minillm/memory/contiguous.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

# Codes of the memory map, one per token slot (the same as the reference's).
FREE = 0
TOKEN = 1
RESERVED = 2
NEVER_USED = 3
EXTERNAL = 4

POLICIES = ("first_fit", "best_fit")


def find_holes(regions: Iterable[tuple[int, int]], capacity: int) -> list[tuple[int, int]]:
    """The free gaps of an arena of `capacity` slots, as `(start, length)` sorted by start.

    `regions` are the reserved `(start, size)` pairs, in any order, never overlapping.
    Gaps of length 0 are not holes.

    Example: regions [(10, 5), (0, 4)] in 20 slots leave holes [(4, 6), (15, 5)].
    Hint: sort the regions by start and walk a cursor from 0 to `capacity`.
    """
    raise NotImplementedError("Task 2.1: find the holes between regions")


def first_fit(holes: list[tuple[int, int]], size: int) -> int | None:
    """Start of the lowest-addressed hole with at least `size` slots, or None if none has.

    Hint: do not assume `holes` is sorted.
    """
    raise NotImplementedError("Task 2.2: first-fit placement")


def best_fit(holes: list[tuple[int, int]], size: int) -> int | None:
    """Start of the smallest hole with at least `size` slots (ties: lowest address), or None."""
    raise NotImplementedError("Task 2.2: best-fit placement")


def external_fragmentation(holes: list[tuple[int, int]], request_size: int) -> int:
    """Free slots that a request of `request_size` slots cannot use: the holes shorter than it.

    Example: holes of 3, 8 and 5 slots and a request of 6 slots: 3 + 5 = 8 slots are unusable.
    """
    raise NotImplementedError("Task 2.3: count externally fragmented slots")


@dataclass
class Region:
    """One request's reservation: `size` slots from `start`, of which `used` hold tokens."""

    request_id: int
    start: int
    size: int
    used: int = 0


class ContiguousAllocator:
    """A `capacity`-slot arena where each request reserves one contiguous region up front.

    Given: the constructor, `holes`, `find_start` and the counters. Yours: `allocate`, `append`,
    `free` (task 2.4) and `memory_map` (task 2.5).
    """

    def __init__(self, capacity: int, policy: str = "first_fit"):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        self.capacity = capacity
        self.policy = policy
        self.regions: dict = {}  # request id -> Region

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
        """Reserve `size` contiguous slots for `request_id`; returns the start, None if no hole fits.

        Raises ValueError if the request already holds a region or if `size` < 1.
        On success, record a `Region` in `self.regions`.
        """
        raise NotImplementedError("Task 2.4: reserve a contiguous region")

    def append(self, request_id, num_tokens: int = 1) -> None:
        """Record that `num_tokens` more tokens of the request now sit in its region.

        Raises ValueError if the request would outgrow its reservation.
        """
        raise NotImplementedError("Task 2.4: record tokens written into a region")

    def free(self, request_id) -> None:
        """Give the request's whole region back."""
        raise NotImplementedError("Task 2.4: free a region")

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
        """One code per slot (`FREE`, `TOKEN`, `RESERVED`, `NEVER_USED`, `EXTERNAL`), uint8.

        In each region: the first `used` slots are TOKEN. If `final_lengths` (request id -> the
        tokens it will hold when it finishes) is given, slots up to that final length are
        RESERVED and the rest of the region NEVER_USED; without it, or for a request it does not
        name, the rest is all RESERVED. If `waiting_size` is given, the slots of every hole
        shorter than it are EXTERNAL: the same holes `external_fragmentation` counts (a hole of
        exactly `waiting_size` slots fits the request).
        """
        raise NotImplementedError("Task 2.5: draw the memory map")
