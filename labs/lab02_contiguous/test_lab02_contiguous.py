"""Lab 2 tests. `make grade LAB=lab02` grades all tasks, `make grade LAB=lab02 TASK=2.3` one."""
import random

import numpy as np
import pytest

STARTER = "contiguous.py"
REFERENCE = "minillm.memory.contiguous"


def occupancy_holes(occupied):
    """Holes found slot by slot: the slow, obviously right way."""
    holes, start = [], None
    for i, used in enumerate(list(occupied) + [True]):
        if not used and start is None:
            start = i
        if used and start is not None:
            holes.append((start, i - start))
            start = None
    return holes


def random_layout(rng, capacity):
    occupied, regions, cursor = np.zeros(capacity, bool), [], 0
    while cursor < capacity:
        cursor += rng.randint(0, 4)
        size = rng.randint(1, 6)
        if cursor + size <= capacity and rng.random() < 0.7:
            regions.append((cursor, size))
            occupied[cursor:cursor + size] = True
        cursor += size
    rng.shuffle(regions)
    return regions, occupied


@pytest.mark.task2_1
def test_holes_examples(impl):
    assert impl.find_holes([(10, 5), (0, 4)], 20) == [(4, 6), (15, 5)]
    assert impl.find_holes([], 8) == [(0, 8)]
    assert impl.find_holes([(0, 8)], 8) == []
    assert impl.find_holes([(0, 3), (3, 2), (7, 1)], 8) == [(5, 2)]


@pytest.mark.task2_1
def test_holes_random_layouts(impl):
    rng = random.Random(0)
    for _ in range(300):
        capacity = rng.randint(1, 50)
        regions, occupied = random_layout(rng, capacity)
        assert impl.find_holes(regions, capacity) == occupancy_holes(occupied)


@pytest.mark.task2_2
def test_first_and_best_fit(impl):
    holes = [(0, 10), (20, 4), (40, 6)]
    assert impl.first_fit(holes, 4) == 0
    assert impl.best_fit(holes, 4) == 20
    assert impl.best_fit(holes, 5) == 40
    assert impl.first_fit(holes, 11) is None and impl.best_fit(holes, 11) is None
    assert impl.first_fit(list(reversed(holes)), 5) == 0  # lowest address, whatever the order
    assert impl.best_fit([(30, 4), (10, 4)], 3) == 10  # ties: lowest address


@pytest.mark.task2_2
def test_fits_random(impl):
    rng = random.Random(1)
    for _ in range(300):
        holes = occupancy_holes(random_layout(rng, rng.randint(1, 50))[1])
        size = rng.randint(1, 8)
        fitting = [h for h in holes if h[1] >= size]
        assert impl.first_fit(holes, size) == (fitting[0][0] if fitting else None)
        best = min(fitting, key=lambda h: (h[1], h[0]))[0] if fitting else None
        assert impl.best_fit(holes, size) == best


@pytest.mark.task2_3
def test_external_fragmentation(impl):
    assert impl.external_fragmentation([(0, 3), (10, 8), (30, 5)], 6) == 8
    assert impl.external_fragmentation([(0, 3), (10, 8)], 1) == 0
    assert impl.external_fragmentation([], 5) == 0
    assert impl.external_fragmentation([(0, 5)], 5) == 0  # a hole of exactly the size fits


@pytest.mark.task2_4
@pytest.mark.parametrize("policy", ["first_fit", "best_fit"])
def test_allocate_and_free(impl, policy):
    arena = impl.ContiguousAllocator(100, policy)
    assert arena.allocate("a", 30) == 0
    assert arena.allocate("b", 50) == 30
    assert arena.allocate("c", 30) is None  # 20 slots left
    assert "c" not in arena.regions
    arena.free("a")
    assert arena.num_free == 50 and arena.largest_hole == 30
    assert arena.allocate("d", 10) == (0 if policy == "first_fit" else 80)
    arena.append("b", 7)
    arena.append("b")
    assert arena.num_tokens == 8
    with pytest.raises(ValueError):
        arena.append("b", 43)  # 8 + 43 > 50
    with pytest.raises(ValueError):
        arena.allocate("b", 1)  # already holds a region
    with pytest.raises(ValueError):
        arena.allocate("e", 0)


@pytest.mark.task2_4
@pytest.mark.parametrize("policy", ["first_fit", "best_fit"])
def test_random_operations_never_overlap(impl, policy):
    rng = random.Random(2)
    arena, live = impl.ContiguousAllocator(300, policy), []
    for rid in range(1500):
        if live and rng.random() < 0.45:
            arena.free(live.pop(rng.randrange(len(live))))
        size = rng.randint(1, 60)
        before = arena.largest_hole
        start = arena.allocate(rid, size)
        assert (start is None) == (before < size)
        if start is not None:
            live.append(rid)
        occupied = np.zeros(300, int)
        for r in arena.regions.values():
            assert 0 <= r.start and r.start + r.size <= 300
            occupied[r.start:r.start + r.size] += 1
        assert occupied.max() <= 1 and arena.num_free == 300 - occupied.sum()


@pytest.mark.task2_5
def test_memory_map(impl):
    arena = impl.ContiguousAllocator(20)
    arena.allocate("a", 6)
    arena.allocate("b", 10)
    arena.free("a")
    arena.append("b", 3)
    plain = arena.memory_map()
    assert plain.dtype == np.uint8 and plain.shape == (20,)
    assert list(plain) == [impl.FREE] * 6 + [impl.TOKEN] * 3 + [impl.RESERVED] * 7 \
        + [impl.FREE] * 4
    codes = arena.memory_map(final_lengths={"b": 7}, waiting_size=5)
    assert list(codes) == [impl.FREE] * 6 + [impl.TOKEN] * 3 + [impl.RESERVED] * 4 \
        + [impl.NEVER_USED] * 3 + [impl.EXTERNAL] * 4


@pytest.mark.task2_5
def test_memory_map_counts_match_the_counters(impl):
    rng = random.Random(3)
    arena = impl.ContiguousAllocator(200)
    for rid in range(40):
        size = rng.randint(1, 20)
        if arena.allocate(rid, size) is not None:
            arena.append(rid, rng.randint(0, size))
        if rid % 3 == 0 and rid in arena.regions:
            arena.free(rid)
    codes = arena.memory_map(waiting_size=15)
    assert (codes == impl.TOKEN).sum() == arena.num_tokens
    assert (codes == impl.RESERVED).sum() == arena.num_reserved - arena.num_tokens
    assert (codes == impl.EXTERNAL).sum() == arena.external_fragmentation(15)
