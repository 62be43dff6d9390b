"""Lab 2 tests. `make grade LAB=lab02` grades all tasks, `make grade LAB=lab02 TASK=2.3` one.

Expected values are worked out slot by slot, the slow and obviously right way. Random layouts
are drawn fresh each run (`rng`), and hypothesis searches for layouts your code gets wrong.
`make grade LAB=lab02 INTEGRATION=1` also replays chapter 3's trace with your allocator in place
of minillm's and requires the same figures.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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


@st.composite
def layouts(draw):
    """An arena: (regions in any order, capacity), regions disjoint."""
    capacity = draw(st.integers(1, 60))
    cuts = sorted(draw(st.lists(st.integers(0, capacity), max_size=12)))
    pairs = list(zip(cuts[::2], cuts[1::2]))
    regions = [(a, b - a) for a, b in pairs if b > a]
    return draw(st.permutations(regions)), capacity


def holes_of(regions, capacity):
    occupied = np.zeros(capacity, bool)
    for start, size in regions:
        occupied[start:start + size] = True
    return occupancy_holes(occupied)


# -- 2.1 ----------------------------------------------------------------------------------------
@pytest.mark.task2_1
@pytest.mark.parametrize("regions,capacity,want", [
    ([(10, 5), (0, 4)], 20, [(4, 6), (15, 5)]), ([], 8, [(0, 8)]), ([(0, 8)], 8, []),
    ([(0, 3), (3, 2), (7, 1)], 8, [(5, 2)]), ([(2, 2)], 4, [(0, 2)])])
def test_holes_examples(impl, regions, capacity, want):
    got = impl.find_holes(regions, capacity)
    assert got == want, f"find_holes({regions}, {capacity}) returned {got}, expected {want}"


@pytest.mark.task2_1
def test_holes_random_layouts(impl, rng):
    for _ in range(300):
        capacity = rng.randint(1, 50)
        regions, occupied = random_layout(rng, capacity)
        got, want = impl.find_holes(list(regions), capacity), occupancy_holes(occupied)
        assert got == want, f"find_holes({regions}, {capacity}) returned {got}, expected {want}"


@pytest.mark.task2_1
@given(layout=layouts())
def test_holes_any_layout(impl, layout):
    regions, capacity = layout
    got, want = impl.find_holes(list(regions), capacity), holes_of(regions, capacity)
    assert got == want, f"find_holes({regions}, {capacity}) returned {got}, expected {want}"


# -- 2.2 ----------------------------------------------------------------------------------------
@pytest.mark.task2_2
def test_first_and_best_fit(impl):
    holes = [(0, 10), (20, 4), (40, 6)]
    cases = [("first_fit", holes, 4, 0), ("best_fit", holes, 4, 20), ("best_fit", holes, 5, 40),
             ("first_fit", holes, 11, None), ("best_fit", holes, 11, None),
             ("first_fit", holes[::-1], 5, 0),  # lowest address, whatever the order
             ("best_fit", [(30, 4), (10, 4)], 3, 10),  # ties: lowest address
             ("first_fit", [(50, 3), (5, 2), (20, 3)], 3, 20),
             ("first_fit", [(0, 2), (9, 6)], 6, 9), ("best_fit", [(0, 7), (9, 6)], 6, 9)]
    for policy, holes_, size, want in cases:  # the last two: a hole of exactly the size fits
        got = getattr(impl, policy)(list(holes_), size)
        assert got == want, f"{policy}({holes_}, {size}) returned {got}, expected {want}"


@pytest.mark.task2_2
@given(layout=layouts(), size=st.integers(1, 12))
def test_fits_any_layout(impl, layout, size):
    holes = holes_of(*layout)
    shuffled = holes[1:] + holes[:1]  # the caller's order is not guaranteed
    fitting = [h for h in holes if h[1] >= size]
    want = fitting[0][0] if fitting else None
    got = impl.first_fit(list(shuffled), size)
    assert got == want, f"first_fit({shuffled}, {size}) returned {got}, expected {want}"
    want = min(fitting, key=lambda h: (h[1], h[0]))[0] if fitting else None
    got = impl.best_fit(list(shuffled[::-1]), size)
    assert got == want, f"best_fit({shuffled[::-1]}, {size}) returned {got}, expected {want}"


# -- 2.3 ----------------------------------------------------------------------------------------
@pytest.mark.task2_3
@pytest.mark.parametrize("holes,size,want", [
    ([(0, 3), (10, 8), (30, 5)], 6, 8), ([(0, 3), (10, 8)], 1, 0), ([], 5, 0),
    ([(0, 5)], 5, 0),  # a hole of exactly the size fits: not fragmented
    ([(0, 5), (9, 4)], 6, 9)])
def test_external_fragmentation(impl, holes, size, want):
    got = impl.external_fragmentation(holes, size)
    assert got == want, f"external_fragmentation({holes}, {size}) returned {got}, expected {want}"


@pytest.mark.task2_3
@given(layout=layouts(), size=st.integers(1, 20))
def test_external_fragmentation_any_layout(impl, layout, size):
    holes = holes_of(*layout)
    want = sum(length for _, length in holes if length < size)
    got = impl.external_fragmentation(holes, size)
    assert got == want, f"external_fragmentation({holes}, {size}) returned {got}, expected {want}"


# -- 2.4 ----------------------------------------------------------------------------------------
@pytest.mark.task2_4
@pytest.mark.parametrize("policy", ["first_fit", "best_fit"])
def test_allocate_and_free(impl, policy):
    arena = impl.ContiguousAllocator(100, policy)
    assert arena.allocate("a", 30) == 0, \
        f"{policy}: allocate('a', 30) in an empty 100-slot arena must start at 0: {arena.regions}"
    assert arena.allocate("b", 50) == 30, \
        f"{policy}: allocate('b', 50) after 'a' took slots 0-29 must start at 30: {arena.regions}"
    got = arena.allocate("c", 30)
    assert got is None, f"allocate('c', 30) with 20 slots left returned {got}, expected None"
    assert "c" not in arena.regions, "a failed allocate must record nothing"
    arena.free("a")
    assert arena.num_free == 50 and arena.largest_hole == 30, arena.holes()
    got, want = arena.allocate("d", 10), (0 if policy == "first_fit" else 80)
    assert got == want, f"{policy}: allocate('d', 10) into holes [(0, 30), (80, 20)] " \
                        f"returned {got}, expected {want}"
    arena.append("b", 7)
    arena.append("b")
    assert arena.num_tokens == 8, \
        f"append('b', 7) then append('b'): num_tokens {arena.num_tokens}, expected 8"
    arena.append("b", 42)  # exactly fills b's 50 slots
    assert arena.regions["b"].used == 50, "append may fill a region exactly"
    with pytest.raises(ValueError):
        arena.append("b", 1)  # 51 > 50
    with pytest.raises(ValueError):
        arena.allocate("b", 1)  # already holds a region
    with pytest.raises(ValueError):
        arena.allocate("e", 0)


@pytest.mark.task2_4
@pytest.mark.parametrize("policy", ["first_fit", "best_fit"])
def test_random_operations_never_overlap(impl, policy, rng):
    arena, live = impl.ContiguousAllocator(300, policy), []
    for rid in range(1500):
        if live and rng.random() < 0.45:
            arena.free(live.pop(rng.randrange(len(live))))
        size = rng.randint(1, 60)
        holes = occupancy_holes(_occupied(arena, 300))
        fitting = [h for h in holes if h[1] >= size]
        want = None if not fitting else fitting[0][0] if policy == "first_fit" \
            else min(fitting, key=lambda h: (h[1], h[0]))[0]
        start = arena.allocate(rid, size)
        assert start == want, f"{policy}: allocate({rid}, {size}) into holes {holes} returned " \
                              f"{start}, expected {want}"
        if start is not None:
            live.append(rid)
            assert arena.regions[rid].start == start and arena.regions[rid].size == size, \
                f"{policy}: allocate({rid}, {size}) returned {start} but recorded " \
                f"{arena.regions[rid]}"
        occupied = np.zeros(300, int)
        for r in arena.regions.values():
            occupied[r.start:r.start + r.size] += 1
        assert occupied.max() <= 1 and arena.num_free == 300 - occupied.sum(), \
            f"{policy}: after allocate({rid}, {size}): {occupied.max()} regions on one slot " \
            f"(at most 1), num_free {arena.num_free}, expected {300 - occupied.sum()}"


def _occupied(arena, capacity):
    occupied = np.zeros(capacity, bool)
    for r in arena.regions.values():
        occupied[r.start:r.start + r.size] = True
    return occupied


# -- 2.5 ----------------------------------------------------------------------------------------
@pytest.mark.task2_5
def test_memory_map(impl):
    arena = impl.ContiguousAllocator(20)
    arena.allocate("a", 6)
    arena.allocate("b", 10)
    arena.free("a")
    arena.append("b", 3)
    plain = arena.memory_map()
    assert plain.dtype == np.uint8 and plain.shape == (20,), (plain.dtype, plain.shape)
    want = [impl.FREE] * 6 + [impl.TOKEN] * 3 + [impl.RESERVED] * 7 + [impl.FREE] * 4
    assert list(plain) == want, f"memory_map() returned {list(plain)}, expected {want}"
    codes = arena.memory_map(final_lengths={"b": 7}, waiting_size=5)
    want = [impl.FREE] * 6 + [impl.TOKEN] * 3 + [impl.RESERVED] * 4 + [impl.NEVER_USED] * 3 \
        + [impl.EXTERNAL] * 4
    assert list(codes) == want, \
        f"memory_map(final_lengths={{'b': 7}}, waiting_size=5) returned {list(codes)}, " \
        f"expected {want}"


@pytest.mark.task2_5
def test_memory_map_agrees_with_external_fragmentation(impl):
    arena = impl.ContiguousAllocator(20)
    arena.allocate("a", 6)
    arena.allocate("b", 10)
    arena.free("a")  # holes of 6 and 4 slots
    for waiting in (4, 5, 6, 7):
        codes = arena.memory_map(waiting_size=waiting)
        marked, counted = int((codes == impl.EXTERNAL).sum()), arena.external_fragmentation(waiting)
        assert marked == counted, \
            f"holes of 6 and 4 slots, a {waiting}-slot request waits: memory_map marks " \
            f"{marked} slots EXTERNAL, external_fragmentation counts {counted} (task 2.3)"


@pytest.mark.task2_5
def test_memory_map_without_a_final_length(impl):
    arena = impl.ContiguousAllocator(12)
    arena.allocate("a", 5)
    arena.allocate("b", 5)
    arena.append("a", 2)
    codes = arena.memory_map(final_lengths={"a": 4})  # b's final length is unknown
    want = [impl.TOKEN] * 2 + [impl.RESERVED] * 2 + [impl.NEVER_USED] + [impl.RESERVED] * 5 \
        + [impl.FREE] * 2
    assert list(codes) == want, \
        f"memory_map(final_lengths={{'a': 4}}) with b not named returned {list(codes)}, " \
        f"expected {want} (b's slots RESERVED, no KeyError)"


@pytest.mark.task2_5
def test_memory_map_random(impl, rng):
    for _ in range(20):
        capacity = rng.randint(20, 200)
        arena, final = impl.ContiguousAllocator(capacity), {}
        for rid in range(40):
            size = rng.randint(1, 20)
            if arena.allocate(rid, size) is not None:
                used = rng.randint(0, size)
                arena.append(rid, used)
                final[rid] = rng.randint(used, size)
            if rid % 3 == 0 and rid in arena.regions:
                arena.free(rid)
        waiting = rng.randint(1, 25)
        named = {rid: n for rid, n in final.items() if rng.random() < 0.8}
        want = np.full(capacity, impl.FREE)
        for r in arena.regions.values():  # slot by slot
            end = named.get(r.request_id, r.size)
            for i in range(r.size):
                want[r.start + i] = impl.TOKEN if i < r.used else \
                    impl.RESERVED if i < end else impl.NEVER_USED
        for start, length in occupancy_holes(_occupied(arena, capacity)):
            if length < waiting:
                want[start:start + length] = impl.EXTERNAL
        got = arena.memory_map(named, waiting)
        regions = sorted((r.start, r.size, r.used) for r in arena.regions.values())
        assert list(got) == list(want), \
            f"memory_map({named}, {waiting}) over regions (start, size, used) {regions} in " \
            f"{capacity} slots:\n got {list(got)}\nwant {list(want)}"


# -- integration: your allocator inside chapter 3's replay --------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("policy", ["first_fit", "best_fit"])
def test_replay_with_your_allocator_matches_minillm(impl, policy):
    from minillm.memory.contiguous import ContiguousAllocator
    from minillm.memory.trace import replay, sharegpt_like_trace

    trace = sharegpt_like_trace(120, seed=5, arrival_rate=0.5)
    want = replay(trace, 8192, policy, map_every=40, allocator_cls=ContiguousAllocator)
    got = replay(trace, 8192, policy, map_every=40, allocator_cls=impl.ContiguousAllocator)
    assert got.summary() == want.summary(), \
        f"chapter 3's replay ({policy}) with your allocator:\n{got.summary()}\nwith " \
        f"minillm's:\n{want.summary()}"
    for step, mine, theirs in zip(want.map_steps, got.maps, want.maps):
        assert (mine == theirs).all(), f"step {step}: your memory map differs from minillm's"
