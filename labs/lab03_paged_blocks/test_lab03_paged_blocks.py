"""Lab 3 tests. `make grade LAB=lab03` grades all tasks, `make grade LAB=lab03 TASK=3.3` one.

The tests use the allocator's public surface (`allocate`, `can_allocate`, `free`, `fork`,
`num_free_blocks`, `blocks_for`, a block's `ref_count`) and minillm's `Sequence`. Random
workloads are drawn fresh each run (`rng`), and hypothesis searches for a sequence of operations
your allocator gets wrong. `make grade LAB=lab03 INTEGRATION=1` also replays chapter 4's trace
with your `BlockManager` in place of minillm's and requires the same figures, and runs
`LLM.generate` on the bundled model with it (the engine's `block_manager_cls` hook): the tokens
and the preemptions must be minillm's.
"""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.engine.sequence import Sequence

STARTER = "block_manager.py"
REFERENCE = "minillm.engine.block_manager"


def new_seq(prompt_len: int, block_size: int = 16) -> Sequence:
    return Sequence(list(range(prompt_len)), block_size)


def prefill(manager, seq, chunk: int | None = None) -> bool:
    """What the scheduler does for a waiting sequence: blocks for the whole prompt, or for the
    next `chunk` tokens of it (chunked prefill)."""
    n = seq.num_tokens - seq.num_computed_tokens
    n = n if chunk is None else min(chunk, n)
    ok = manager.allocate(seq, n)
    if ok:
        seq.num_computed_tokens += n
    return ok


def decode(manager, seq) -> bool:
    """One decode step: the token sampled last gets a slot."""
    seq.append_token(7)
    ok = manager.allocate(seq, 1)
    if ok:
        seq.num_computed_tokens += 1
    return ok


def ceil_blocks(tokens: int, block_size: int) -> int:
    return len(range(0, tokens, block_size))  # one block starts every block_size tokens


def slot(seq, t, block_size=16):
    return seq.block_table[t // block_size] * block_size + t % block_size


def describe(manager, seqs) -> str:
    tables = ", ".join(f"{s.num_computed_tokens} tokens -> {s.block_table}" for s in seqs)
    return f"free blocks {manager.num_free_blocks} of {manager.num_blocks}; tables: {tables}"


# -- 3.1 ----------------------------------------------------------------------------------------
@pytest.mark.task3_1
@pytest.mark.parametrize("tokens,size,blocks", [(0, 16, 0), (1, 16, 1), (16, 16, 1), (17, 16, 2),
                                                (100, 16, 7), (128, 32, 4), (129, 32, 5)])
def test_blocks_for(impl, tokens, size, blocks):
    got = impl.blocks_for(tokens, size)
    assert got == blocks, f"blocks_for({tokens}, {size}) returned {got}, expected {blocks}"


@pytest.mark.task3_1
@given(tokens=st.integers(0, 10 ** 18), size=st.integers(1, 4096))
def test_blocks_for_any_size(impl, tokens, size):
    got, want = impl.blocks_for(tokens, size), -(-tokens // size)
    assert got == want and type(got) is int, \
        f"blocks_for({tokens}, {size}) returned {got!r}, expected the int {want}"


# -- 3.2 ----------------------------------------------------------------------------------------
@pytest.mark.task3_2
def test_prompt_gets_its_blocks(impl):
    manager = impl.BlockManager(10, 16, enable_prefix_caching=False)
    seq = new_seq(40)
    assert manager.can_allocate(seq, 40), "can_allocate(40-token prompt) with 10 free blocks"
    assert prefill(manager, seq), "allocate(40-token prompt) with 10 free blocks returned False"
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3, \
        f"a 40-token prompt in 16-token blocks needs 3 distinct blocks, got {seq.block_table}"
    assert all(0 <= b < 10 for b in seq.block_table), seq.block_table
    assert manager.num_free_blocks == 7, describe(manager, [seq])
    counts = [manager.blocks[b].ref_count for b in seq.block_table]
    assert counts == [1, 1, 1], f"a block taken for one sequence has ref_count 1, got {counts}"


@pytest.mark.task3_2
def test_all_or_nothing(impl):
    manager = impl.BlockManager(4, 16, enable_prefix_caching=False)
    big = new_seq(65)  # needs 5 blocks
    assert not manager.can_allocate(big, 65), "can_allocate(65 tokens) with 4 blocks of 16"
    assert manager.allocate(big, 65) is False, "allocate(65 tokens) with 4 blocks of 16"
    assert big.block_table == [] and manager.num_free_blocks == 4, \
        f"a failed allocate must change nothing: {describe(manager, [big])}"
    small = new_seq(64)  # exactly the 4 free blocks
    assert manager.can_allocate(small, 64), "can_allocate(64 tokens) with exactly 4 free blocks"
    assert prefill(manager, small) and manager.num_free_blocks == 0, describe(manager, [small])


@pytest.mark.task3_2
def test_chunked_prefill_counts_the_blocks_held(impl, rng):
    """A prompt prefilled in chunks: each chunk needs only the blocks its sequence lacks."""
    for _ in range(30):
        size = rng.choice([4, 8, 16])
        prompt = rng.randint(2, 12 * size)
        manager = impl.BlockManager(ceil_blocks(prompt, size), size, enable_prefix_caching=False)
        seq = new_seq(prompt, size)
        while seq.num_computed_tokens < prompt:
            chunk = min(rng.randint(1, 2 * size), prompt - seq.num_computed_tokens)
            before = seq.num_computed_tokens
            assert manager.can_allocate(seq, chunk), \
                f"can_allocate({chunk}-token chunk) after {before} of a {prompt}-token prompt " \
                f"({describe(manager, [seq])}, block size {size}): the blocks already held " \
                "count"
            assert prefill(manager, seq, chunk), \
                f"allocate({chunk}-token chunk) after {before} of {prompt} tokens failed"
            want = ceil_blocks(seq.num_computed_tokens, size)
            assert len(seq.block_table) == want, \
                f"after a {chunk}-token chunk, {seq.num_computed_tokens} tokens in {size}-token " \
                f"blocks need {want} blocks, the table has {seq.block_table}"
        assert manager.num_free_blocks == 0, describe(manager, [seq])


@pytest.mark.task3_2
def test_the_last_partial_block_has_room(impl):
    manager = impl.BlockManager(3, 16, enable_prefix_caching=False)
    seq = new_seq(48)
    # 3 blocks held, the last has 8 slots free; none is free
    assert prefill(manager, seq, 40), \
        f"allocate(40 of a 48-token prompt) with 3 free blocks of 16 returned False " \
        f"({describe(manager, [seq])})"
    assert manager.can_allocate(seq, 8), \
        f"40 tokens in 3 blocks of 16, no free block: 8 more tokens fit in the last block " \
        f"({describe(manager, [seq])})"
    assert not manager.can_allocate(seq, 9), "9 more tokens need a 4th block, and none is free"
    assert prefill(manager, seq) and seq.num_computed_tokens == 48, describe(manager, [seq])


@pytest.mark.task3_2
def test_sequences_never_share_slots(impl, rng):
    manager = impl.BlockManager(64, 16, enable_prefix_caching=False)
    seqs = []
    while True:
        seq = new_seq(rng.randint(1, 70))
        if not prefill(manager, seq):
            break
        seqs.append(seq)
    slots = [slot(s, t) for s in seqs for t in range(s.num_tokens)]
    assert len(slots) == len(set(slots)), f"two tokens share a slot: {describe(manager, seqs)}"
    assert all(0 <= x < 64 * 16 for x in slots), \
        f"slots {[x for x in slots if not 0 <= x < 64 * 16]} lie outside the 64 blocks of 16: " \
        f"{describe(manager, seqs)}"
    used = sum(len(s.block_table) for s in seqs)
    assert manager.num_free_blocks == 64 - used, describe(manager, seqs)
    assert 64 - used < ceil_blocks(seq.num_tokens, 16), \
        f"a {seq.num_tokens}-token prompt was refused with {64 - used} blocks free"


# -- 3.3 ----------------------------------------------------------------------------------------
@pytest.mark.task3_3
def test_decode_adds_a_block_only_when_the_last_is_full(impl):
    manager = impl.BlockManager(8, 4, enable_prefix_caching=False)
    seq = new_seq(3, block_size=4)
    assert prefill(manager, seq) and len(seq.block_table) == 1, \
        f"a 3-token prompt in blocks of 4 needs 1 block: {describe(manager, [seq])}"
    tables = []
    for _ in range(9):  # tokens 4 .. 12
        assert decode(manager, seq), describe(manager, [seq])
        tables.append(len(seq.block_table))
    assert tables == [1, 2, 2, 2, 2, 3, 3, 3, 3], \
        f"block counts as a 3-token prompt decodes to 12 tokens in blocks of 4: got {tables}, " \
        "expected [1, 2, 2, 2, 2, 3, 3, 3, 3]"
    assert manager.num_free_blocks == 5, describe(manager, [seq])


@pytest.mark.task3_3
def test_decode_runs_out_cleanly(impl):
    manager = impl.BlockManager(2, 4, enable_prefix_caching=False)
    seq = new_seq(8, block_size=4)
    assert prefill(manager, seq), \
        f"allocate(8-token prompt) with exactly 2 free blocks of 4 returned False " \
        f"({describe(manager, [seq])})"
    table = list(seq.block_table)
    assert not manager.can_allocate(seq, 1), "token 9 needs a third block of 4, none is free"
    assert decode(manager, seq) is False, "allocate must return False when no block is free"
    assert seq.block_table == table and manager.num_free_blocks == 0, describe(manager, [seq])


@pytest.mark.task3_3
def test_growing_keeps_earlier_blocks(impl, rng):
    manager = impl.BlockManager(64, 16, enable_prefix_caching=False)
    seqs = [new_seq(rng.randint(1, 40)) for _ in range(4)]
    for seq in seqs:
        assert prefill(manager, seq), \
            f"allocate({seq.num_tokens}-token prompt) with 64 blocks of 16 returned False " \
            f"({describe(manager, seqs)})"
    first = [list(s.block_table) for s in seqs]
    for _ in range(rng.randint(20, 60)):
        for seq in seqs:
            assert decode(manager, seq), describe(manager, seqs)
    for seq, table in zip(seqs, first):
        assert seq.block_table[:len(table)] == table, \
            f"decoding moved earlier blocks: {table} became {seq.block_table}"
        want = ceil_blocks(seq.num_computed_tokens, 16)
        assert len(seq.block_table) == want, \
            f"{seq.num_computed_tokens} tokens need {want} blocks, the table has " \
            f"{seq.block_table}"
    held = [b for s in seqs for b in s.block_table]
    assert len(held) == len(set(held)), f"a block is held twice: {describe(manager, seqs)}"


# -- 3.4 ----------------------------------------------------------------------------------------
@pytest.mark.task3_4
def test_free_returns_every_block(impl):
    manager = impl.BlockManager(16, 16, enable_prefix_caching=False)
    a, b = new_seq(50), new_seq(30)
    prefill(manager, a), prefill(manager, b)
    assert manager.num_free_blocks == 16 - 4 - 2, \
        f"50- and 30-token prompts hold 4 + 2 blocks of 16: {describe(manager, [a, b])}, " \
        "expected 10 free"
    manager.free(a)
    assert a.block_table == [] and manager.num_free_blocks == 14, \
        f"after freeing a 50-token sequence: {describe(manager, [a, b])}, expected 14 free"
    manager.free(b)
    assert manager.num_free_blocks == 16, describe(manager, [a, b])


@pytest.mark.task3_4
def test_freed_blocks_go_to_the_back_tail_first(impl):
    """Blocks are taken from the front of the free list; freed ones join at the back, the last
    block of a table first."""
    manager = impl.BlockManager(10, 4, enable_prefix_caching=False)
    a = new_seq(12, block_size=4)
    assert prefill(manager, a) and a.block_table == [0, 1, 2], a.block_table
    manager.free(a)
    b = new_seq(36, block_size=4)  # 9 of the 10 blocks
    assert prefill(manager, b), \
        f"allocate(36-token prompt) with 10 free blocks of 4 returned False " \
        f"({describe(manager, [b])})"
    assert b.block_table == [3, 4, 5, 6, 7, 8, 9, 2, 1], \
        f"after freeing blocks [0, 1, 2], the next 9 blocks taken were {b.block_table}, " \
        "expected the never-used 3..9 first, then the freed ones tail first: 2, 1"


@pytest.mark.task3_4
def test_a_forked_block_is_freed_by_its_last_holder(impl):
    manager = impl.BlockManager(8, 4, enable_prefix_caching=False)
    parent, child = new_seq(10, block_size=4), new_seq(0, block_size=4)
    assert prefill(manager, parent), \
        f"allocate(10-token prompt) with 8 free blocks of 4 returned False " \
        f"({describe(manager, [parent])})"
    manager.fork(parent, child)  # 3 blocks, each held twice
    manager.free(parent)
    assert manager.num_free_blocks == 5, \
        f"the child still holds {child.block_table}: no block may be free again yet " \
        f"({manager.num_free_blocks} free of 8, expected 5)"
    other = new_seq(20, block_size=4)
    assert prefill(manager, other) and not set(other.block_table) & set(child.block_table), \
        f"blocks the child holds were handed out again: {other.block_table} vs " \
        f"{child.block_table}"
    manager.free(child)
    assert manager.num_free_blocks == 3, describe(manager, [other])


@pytest.mark.task3_4
def test_churn_conserves_blocks(impl, rng):
    """Many sequences come and go: free + held always adds up, nothing is held twice."""
    manager = impl.BlockManager(50, 8, enable_prefix_caching=False)
    live = []
    for _ in range(400):
        r = rng.random()
        if r < 0.3:
            seq = new_seq(rng.randint(1, 40), block_size=8)
            if prefill(manager, seq):
                live.append(seq)
        elif r < 0.5 and live:
            manager.free(live.pop(rng.randrange(len(live))))
        else:
            for seq in live:
                decode(manager, seq)
        held = [b for s in live for b in s.block_table]
        assert len(held) == len(set(held)), f"a block is held twice: {describe(manager, live)}"
        assert manager.num_free_blocks + len(held) == 50, describe(manager, live)


operations = st.lists(st.tuples(st.sampled_from(["new", "chunk", "decode", "fork", "free"]),
                                st.integers(0, 10 ** 6), st.integers(1, 40)), max_size=60)


@pytest.mark.task3_4
@given(ops=operations)
def test_any_operations_keep_the_books(impl, ops):
    """Property: whatever happens, every block is either free or held, a block's ref_count is the
    number of sequences holding it, and a table is exactly as long as its tokens need."""
    manager = impl.BlockManager(12, 4, enable_prefix_caching=False)
    # Forked sequences are only freed: writing into a shared block is copy-on-write (chapter 8).
    growing, frozen = [], []
    for op, pick, n in ops:
        if op == "new":
            seq = new_seq(n, block_size=4)
            if prefill(manager, seq, chunk=pick % n + 1):
                growing.append(seq)
        elif op == "chunk" and growing:
            seq = growing[pick % len(growing)]
            if seq.num_computed_tokens < seq.num_tokens:
                prefill(manager, seq, chunk=n)
        elif op == "decode" and growing:
            seq = growing[pick % len(growing)]
            if seq.num_computed_tokens == seq.num_tokens:
                decode(manager, seq)
        elif op == "fork" and growing:
            parent = growing.pop(pick % len(growing))
            child = new_seq(0, block_size=4)
            manager.fork(parent, child)
            frozen += [parent, child]
        elif op == "free" and (growing or frozen):
            pool = frozen if frozen and (pick % 2 or not growing) else growing
            seq = pool.pop(pick % len(pool))
            manager.free(seq)
            assert seq.block_table == [], f"free left the table {seq.block_table}"
        live = growing + frozen
        holders = {}
        for seq in live:
            for b in seq.block_table:
                holders[b] = holders.get(b, 0) + 1
            assert len(seq.block_table) == ceil_blocks(seq.num_computed_tokens, 4), \
                f"after {op}: {describe(manager, [seq])}"
        assert manager.num_free_blocks == 12 - len(holders), \
            f"after {op}: {describe(manager, live)}; {len(holders)} distinct blocks are held"
        for b, count in holders.items():
            assert manager.blocks[b].ref_count == count, \
                f"after {op}: block {b} is held by {count} sequence(s), its ref_count is " \
                f"{manager.blocks[b].ref_count}"


# -- integration: your allocator inside chapter 4's replay --------------------------------------
@pytest.mark.integration
def test_replay_with_your_block_manager_matches_minillm(impl):
    from minillm.engine.block_manager import BlockManager
    from minillm.memory.trace import replay, sharegpt_like_trace

    trace = sharegpt_like_trace(200, seed=7, arrival_rate=0.5)
    capacity = 8192  # tight: preemptions happen
    want = replay(trace, capacity, "paged", map_every=25, allocator_cls=BlockManager)
    got = replay(trace, capacity, "paged", map_every=25, allocator_cls=impl.BlockManager)
    assert want.preemptions > 0, \
        f"the trace must preempt in {capacity} slots: minillm's replay made {want.preemptions}"
    assert got.summary() == want.summary(), \
        f"chapter 4's replay (200 requests, {capacity} slots) with your BlockManager:\n" \
        f"{got.summary()}\nwith minillm's:\n{want.summary()}"
    for step, mine, theirs in zip(want.map_steps, got.maps, want.maps):
        assert (mine == theirs).all(), \
            f"step {step}: your allocator placed tokens in other blocks than minillm's " \
            "(check the free-list order of task 3.4)"


# -- integration: your allocator inside the engine ----------------------------------------------
def engine_block_manager(impl):
    """Your BlockManager with the engine's other duties switched off: prefix caching, swapping
    and copy-on-write are chapter 8's (the engine is run without them)."""
    from minillm.engine.block_manager import BlockMoves

    class EngineBlockManager(impl.BlockManager):
        enable_prefix_caching = False

        def reuse_cached_prefix(self, seq):
            pass

        def cache_full_blocks(self, seq):
            pass

        def take_moves(self):
            return BlockMoves()

        def release_cpu_blocks(self, swap_in):
            pass

    return EngineBlockManager


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_engine_with_your_block_manager_generates_the_same_tokens(impl):
    from minillm import LLM, SamplingParams
    from minillm.engine.block_manager import BlockManager

    prompts = ["Once upon a time", "The little dog ran to the park and", "A",
               "In the morning the sun", "She said that the", "Tom and his friend"]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    # Few blocks and a chunked prefill budget: blocks run out, sequences are preempted.
    settings = dict(max_model_len=48, block_size=8, num_gpu_blocks_override=8,
                    max_num_batched_tokens=12, max_num_seqs=4, enable_prefix_caching=False)

    def run(block_manager_cls):
        llm = LLM(block_manager_cls=block_manager_cls, **settings)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        blocks = llm.engine.block_manager
        return ([o.outputs[0].token_ids for o in outputs],
                llm.engine.scheduler.stats.num_preemptions, blocks.num_free_blocks)

    got, preemptions, free = run(engine_block_manager(impl))
    want, want_preemptions, _ = run(BlockManager)
    assert want_preemptions > 0, "setup: this KV budget should force preemptions"
    for prompt, ids, want_ids in zip(prompts, got, want):
        assert ids == want_ids, \
            f"{prompt!r}: tokens {ids} with your BlockManager in the engine, {want_ids} with " \
            f"minillm's"
    assert preemptions == want_preemptions, \
        f"{preemptions} preemptions with your BlockManager, {want_preemptions} with minillm's " \
        f"(too many: can_allocate forgets the blocks a sequence holds? too few: it " \
        f"over-promises)"
    assert free == 8, f"after every request finished, {free} of 8 blocks are free"
