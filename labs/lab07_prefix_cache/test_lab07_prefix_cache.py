"""Lab 7 tests. `make grade LAB=lab07` grades all tasks, `make grade LAB=lab07 TASK=7.2` one.

The tests drive the block manager as the scheduler does (admit: `reuse_cached_prefix`, then
`allocate`; after a step: `cache_full_blocks`; `fork` for parallel samples; `free`) and check
its books: keys, the cache index, reference counts, the free list, the copies recorded. The
property tests (hypothesis) also keep a *fake KV memory*: each slot holds the tokens its K/V
depend on (every token up to it), written when tokens are computed, copied when the block
manager records a copy; every sequence must read its own tokens back through its block table,
so a block adopted for the wrong prefix or written while shared is found. Random prompts are
drawn fresh each run. `make grade LAB=lab07 INTEGRATION=1` also runs the engine with your
BlockManager and requires minillm's tokens and prefix-cache hits.
"""
import hashlib
from array import array
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.engine.sequence import Sequence

STARTER = "block_manager.py"
REFERENCE = "minillm.engine.block_manager"


def sha(parent, tokens) -> bytes:
    """The key, computed here independently of your code."""
    return hashlib.sha256((parent or b"") + array("q", tokens).tobytes()).digest()


def keys_of(tokens, size) -> list[bytes]:
    keys, parent = [], None
    for i in range(len(tokens) // size):
        parent = sha(parent, tokens[i * size:(i + 1) * size])
        keys.append(parent)
    return keys


def new_seq(tokens, size=4) -> Sequence:
    return Sequence(list(tokens), size)


def hold(bm, seq, num_blocks) -> None:
    """Task 7.1's tests give a sequence blocks by hand (from the front of the free list), so
    they need nothing of task 7.2."""
    for _ in range(num_blocks):
        block_id = next(iter(bm.free_block_ids))
        del bm.free_block_ids[block_id]
        bm.blocks[block_id].ref_count = 1
        seq.block_table.append(block_id)


def admit(bm, seq) -> bool:
    """What the scheduler does for a waiting sequence: adopt its cached prefix, allocate the
    rest, compute it, key its full blocks."""
    bm.reuse_cached_prefix(seq)
    if not bm.allocate(seq, seq.num_tokens - seq.num_computed_tokens):
        bm.free(seq)
        seq.num_computed_tokens = seq.num_cached_tokens = 0
        return False
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_full_blocks(seq)
    return True


def decode(bm, seq, token) -> bool:
    seq.append_token(token)
    if not bm.allocate(seq, 1):
        seq.token_ids.pop()
        return False
    seq.num_computed_tokens += 1
    bm.cache_full_blocks(seq)
    return True


def books(bm, seqs) -> str:
    tables = "; ".join(f"{s.token_ids} -> {s.block_table}" for s in seqs)
    counts = {b.block_id: b.ref_count for b in bm.blocks if b.ref_count}
    return f"tables: {tables}; ref_counts {counts}; free {list(bm.free_block_ids)}"


def check_books(bm, live) -> None:
    """Reference counts conserved; no block both free and held; cache entries consistent."""
    holders = Counter(b for s in live for b in s.block_table)
    for block in bm.blocks:
        held, free = holders[block.block_id], block.block_id in bm.free_block_ids
        assert block.ref_count == held, \
            f"block {block.block_id} is in {held} block table(s) but its ref_count is " \
            f"{block.ref_count} ({books(bm, live)})"
        assert free != (held > 0), \
            f"block {block.block_id} is {'free' if free else 'not free'} and held by {held} " \
            f"sequence(s) ({books(bm, live)})"
    for key, block_id in bm.cached.items():
        assert bm.blocks[block_id].hash == key, \
            f"bm.cached names block {block_id} for a key it does not hold"


# -- 7.1 the hash chain -------------------------------------------------------------------------
@pytest.mark.task7_1
def test_chain_hash_is_sha256_of_parent_and_tokens(impl, rng):
    for _ in range(50):
        tokens = [rng.randrange(150_000) for _ in range(rng.choice([1, 4, 16]))]
        parent = rng.choice([None, sha(None, [rng.randrange(100)])])
        got = impl.chain_hash(parent, tokens)
        assert got == sha(parent, tokens), \
            f"chain_hash({parent!r}, {tokens}) is {got!r}; expected the SHA-256 digest of the " \
            "parent's key (nothing for None) followed by bytes(array('q', tokens))"


@pytest.mark.task7_1
def test_a_key_depends_on_every_token_before_it(impl, rng):
    a = [rng.randrange(1000) for _ in range(8)]
    b = list(a)
    b[1] += 1  # differs in the first block only
    ka = impl.chain_hash(impl.chain_hash(None, a[:4]), a[4:])
    kb = impl.chain_hash(impl.chain_hash(None, b[:4]), b[4:])
    assert ka != kb, \
        f"{a} and {b} share their second block's tokens {a[4:]} but not the first block: the " \
        "second blocks' keys must differ (a key covers the parent's key)"
    assert impl.chain_hash(None, [1, 2]) != impl.chain_hash(None, [2, 1]), "token order matters"


@pytest.mark.task7_1
def test_cache_full_blocks_keys_full_blocks_only(impl, rng):
    for _ in range(20):
        size = rng.choice([2, 4, 8])
        tokens = [rng.randrange(500) for _ in range(rng.randint(1, 6 * size))]
        bm = impl.BlockManager(8, size)
        seq = new_seq(tokens, size)
        hold(bm, seq, -(-len(tokens) // size))
        seq.num_computed_tokens = len(tokens)
        bm.cache_full_blocks(seq)
        want = keys_of(tokens, size)
        assert seq.block_hashes == want, \
            f"{len(tokens)} tokens in blocks of {size}: seq.block_hashes should be the chained " \
            f"keys of the {len(want)} full blocks, got {len(seq.block_hashes)} keys" + \
            (" (a partly filled block is not keyed)" if len(seq.block_hashes) > len(want) else "")
        assert bm.cached == {k: b for k, b in zip(want, seq.block_table)}, \
            f"bm.cached should map each full block's key to its block ({seq.block_table})"
        for i, block_id in enumerate(seq.block_table):
            block = bm.blocks[block_id]
            full = i < len(want)
            assert block.hash == (want[i] if full else None), \
                f"block {i} of {tokens} (blocks of {size}): hash {block.hash!r}"
            assert block.token_ids == (seq.block_tokens(i) if full else []), \
                f"block {i}: token_ids {block.token_ids}, expected its tokens"


@pytest.mark.task7_1
def test_cache_full_blocks_extends_the_chain_step_by_step(impl, rng):
    """Called after every step: only the newly full blocks are keyed, chained to the earlier."""
    tokens = [rng.randrange(500) for _ in range(23)]
    bm = impl.BlockManager(8, 4)
    seq = new_seq(tokens, 4)
    hold(bm, seq, 6)
    for computed in (3, 4, 9, 9, 16, 23):
        seq.num_computed_tokens = computed
        bm.cache_full_blocks(seq)
        assert seq.block_hashes == keys_of(tokens[:computed], 4), \
            f"after {computed} of {len(tokens)} tokens computed (blocks of 4), " \
            f"block_hashes has {len(seq.block_hashes)} keys, expected {computed // 4}"
    assert len(bm.cached) == 5, \
        f"23 tokens computed in blocks of 4: 5 full blocks cached, bm.cached has {len(bm.cached)}"


@pytest.mark.task7_1
def test_a_key_cached_twice_keeps_the_first_block(impl):
    bm = impl.BlockManager(8, 4)
    a, b = new_seq(range(10), 4), new_seq(range(10), 4)
    hold(bm, a, 3), hold(bm, b, 3)
    for seq in (a, b):
        seq.num_computed_tokens = 10
        bm.cache_full_blocks(seq)
    want = keys_of(list(range(10)), 4)
    assert a.block_hashes == want and b.block_hashes == want, \
        "each sequence keeps the keys of its full blocks, even when they are cached already"
    assert bm.cached == dict(zip(want, a.block_table)), \
        f"two sequences computed the same tokens: the cache keeps the first's blocks " \
        f"{a.block_table[:2]}, not {b.block_table[:2]}"
    assert all(bm.blocks[i].hash is None for i in b.block_table), \
        "the second sequence's blocks are not in the cache: no key on them"


@pytest.mark.task7_1
def test_no_keys_without_prefix_caching(impl):
    bm = impl.BlockManager(4, 4, enable_prefix_caching=False)
    seq = new_seq(range(8), 4)
    hold(bm, seq, 2)
    seq.num_computed_tokens = 8
    bm.cache_full_blocks(seq)
    assert bm.cached == {} and seq.block_hashes == [], "enable_prefix_caching=False: no keys"


# -- 7.2 reuse, and the LRU of freed cached blocks ----------------------------------------------
@pytest.mark.task7_2
def test_take_free_block_takes_the_least_recently_freed(impl):
    bm = impl.BlockManager(4, 4)
    assert [bm._take_free_block() for _ in range(4)] == [0, 1, 2, 3], \
        "a fresh manager hands out blocks 0, 1, 2, 3 in order"
    assert bm.num_free_blocks == 0 and all(b.ref_count == 1 for b in bm.blocks), \
        "a block taken has ref_count 1 and is off the free list"
    for block_id in (2, 0, 3):
        bm._release(block_id)  # the inherited release: to the back of the free list
    assert bm._take_free_block() == 2 and bm._take_free_block() == 0, \
        "freed in the order 2, 0, 3: the least recently freed (2, then 0) is taken first"


@pytest.mark.task7_2
def test_a_prompt_reuses_the_cached_prefix(impl, rng):
    for _ in range(20):
        size = rng.choice([2, 4, 8])
        shared = [rng.randrange(500) for _ in range(rng.randint(1, 4) * size)]
        a = new_seq(shared + [rng.randrange(500) for _ in range(rng.randint(1, 2 * size))], size)
        bm = impl.BlockManager(32, size)
        assert admit(bm, a), books(bm, [a])
        b = new_seq(shared + [rng.randrange(500, 600) for _ in range(rng.randint(1, 2 * size))],
                    size)
        bm.reuse_cached_prefix(b)
        n = len(shared) // size
        assert b.block_table == a.block_table[:n], \
            f"a {len(b.token_ids)}-token prompt starting with the {len(shared)} tokens of a " \
            f"running sequence's full blocks {a.block_table[:n]} (blocks of {size}) adopted " \
            f"{b.block_table}"
        assert b.num_computed_tokens == b.num_cached_tokens == n * size, \
            f"after adopting {n} blocks of {size}: num_computed_tokens " \
            f"{b.num_computed_tokens}, num_cached_tokens {b.num_cached_tokens}"
        assert b.block_hashes == keys_of(shared, size), "b.block_hashes: the adopted keys"
        check_books(bm, [a, b])


@pytest.mark.task7_2
def test_one_token_is_always_left_to_compute(impl):
    bm = impl.BlockManager(8, 4)
    a = new_seq(range(8), 4)
    assert admit(bm, a), f"admit(8-token prompt) into 8 free blocks of 4: {books(bm, [a])}"
    b = new_seq(range(8), 4)  # the same 8 tokens: 2 full blocks, both cached
    bm.reuse_cached_prefix(b)
    assert b.block_table == a.block_table[:1] and b.num_computed_tokens == 4, \
        f"an 8-token prompt whose 2 blocks are cached adopts only the first " \
        f"({a.block_table[:1]}): its last token must be computed for its logits; got " \
        f"{b.block_table}, {b.num_computed_tokens} tokens computed"


@pytest.mark.task7_2
def test_a_chain_breaks_at_the_first_different_block(impl):
    bm = impl.BlockManager(16, 4)
    a = new_seq([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], 4)
    assert admit(bm, a), f"admit(13-token prompt) into 16 free blocks of 4: {books(bm, [a])}"
    b = new_seq([1, 2, 3, 4, 0, 6, 7, 8, 9, 10, 11, 12, 13], 4)  # block 1 differs, block 2 not
    bm.reuse_cached_prefix(b)
    assert b.block_table == a.block_table[:1], \
        f"{b.token_ids} shares only its first block with {a.token_ids}; its third block's " \
        f"tokens match but not what comes before them: adopted {b.block_table}, expected " \
        f"{a.block_table[:1]}"


@pytest.mark.task7_2
def test_a_freed_prefix_stays_cached_until_reused(impl):
    bm = impl.BlockManager(6, 4)
    a = new_seq(range(100, 113), 4)  # 13 tokens: 3 full blocks + 1
    assert admit(bm, a), f"admit(13-token prompt) into 6 free blocks of 4: {books(bm, [a])}"
    table = list(a.block_table)
    bm.free(a)
    assert bm.num_free_blocks == 6 and len(bm.cached) == 3, \
        "a finished sequence's full blocks stay cached while free"
    b = new_seq(list(range(100, 112)) + [7], 4)
    assert admit(bm, b), books(bm, [b])
    assert b.block_table[:3] == table[:3], \
        f"the freed, cached blocks {table[:3]} should be adopted again, got {b.block_table}"
    assert b.num_cached_tokens == 12, \
        f"3 cached blocks of 4 adopted: num_cached_tokens {b.num_cached_tokens}, expected 12"
    assert all(i not in bm.free_block_ids for i in b.block_table), \
        f"adopted blocks must leave the free list ({books(bm, [b])})"
    check_books(bm, [b])


@pytest.mark.task7_2
def test_the_least_recently_freed_prefix_is_evicted_first(impl, rng):
    size = 4
    bm = impl.BlockManager(6, size)
    old, new = ([rng.randrange(1000) for _ in range(2 * size + 1)] for _ in range(2))
    a, b = new_seq(old, size), new_seq(new, size)
    # 3 blocks each: all 6 taken
    assert admit(bm, a) and admit(bm, b), \
        f"admit two {2 * size + 1}-token prompts into 6 free blocks of {size}: " \
        f"{books(bm, [a, b])}"
    a_table, b_table = list(a.block_table), list(b.block_table)
    bm.free(a)  # a first: its blocks are the least recently freed
    bm.free(b)
    c = new_seq([rng.randrange(1000, 2000) for _ in range(2 * size)], size)  # 2 fresh blocks
    assert admit(bm, c), \
        f"admit({2 * size}-token prompt) into 6 freed blocks of {size}: {books(bm, [c])}"
    assert set(c.block_table) <= set(a_table), \
        f"the blocks freed first ({a_table}, then {b_table}) are reused first: the new " \
        f"sequence got {c.block_table}"
    assert a.block_hashes[1] not in bm.cached, \
        f"block {a_table[1]} was reused for other tokens: its key must leave bm.cached"
    assert all(key in bm.cached for key in b.block_hashes), \
        "the most recently freed prefix must stay cached"
    d = new_seq(new, size)
    bm.reuse_cached_prefix(d)
    assert d.num_cached_tokens == 2 * size, \
        f"the most recently freed prefix {new[:2 * size]} should still be found in the cache"
    e = new_seq(old, size)
    bm.reuse_cached_prefix(e)
    assert e.num_cached_tokens < 2 * size, \
        "a prefix whose first block was reused for other tokens cannot be found"
    check_books(bm, [c, d, e])


@pytest.mark.task7_2
def test_an_evicted_block_holds_no_key(impl):
    bm = impl.BlockManager(2, 4)
    a = new_seq(range(5), 4)
    assert admit(bm, a), f"admit(5-token prompt) into 2 free blocks of 4: {books(bm, [a])}"
    key = a.block_hashes[0]
    bm.free(a)
    taken = [bm._take_free_block(), bm._take_free_block()]
    assert key not in bm.cached, "block reused for other tokens: its key leaves bm.cached"
    assert all(bm.blocks[i].hash is None and bm.blocks[i].token_ids == [] for i in taken), \
        "a block taken for new tokens holds no key and no tokens"


@pytest.mark.task7_2
def test_no_reuse_without_prefix_caching(impl):
    bm = impl.BlockManager(8, 4, enable_prefix_caching=False)
    a = new_seq(range(9), 4)
    assert admit(bm, a), \
        f"admit(9-token prompt) into 8 free blocks of 4, no prefix caching: {books(bm, [a])}"
    b = new_seq(range(9), 4)
    bm.reuse_cached_prefix(b)
    assert b.block_table == [] and b.num_computed_tokens == 0, \
        f"enable_prefix_caching=False: nothing to adopt, got table {b.block_table} and " \
        f"{b.num_computed_tokens} tokens computed"


prompts = st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=14), min_size=1,
                   max_size=12)


@pytest.mark.task7_2
@given(prompts=prompts, frees=st.lists(st.integers(0, 100), max_size=12),
       num_blocks=st.integers(4, 12))
def test_sharing_prefixes_keeps_the_books(impl, prompts, frees, num_blocks):
    """Property: prompts over 3 tokens share prefixes a lot; admitted, decoded and freed in any
    order, the reference counts equal the holders, no block is both free and held, and every
    sequence reads its own tokens back from the (fake) KV memory."""
    bm, memory, live = impl.BlockManager(num_blocks, 2), FakeKV(2), []
    for i, tokens in enumerate(prompts):
        seq = new_seq(tokens, 2)
        if memory.admit(bm, seq):
            live.append(seq)
        if frees and i < len(frees) and live:
            bm.free(live.pop(frees[i] % len(live)))
        for s in live:
            memory.decode(bm, s, i % 3)
        check_books(bm, live)
        memory.check(live)


# -- 7.3 copy-on-write --------------------------------------------------------------------------
@pytest.mark.task7_3
def test_fork_shares_every_block(impl, rng):
    bm = impl.BlockManager(8, 4)
    parent = new_seq([rng.randrange(100) for _ in range(10)], 4)
    assert admit(bm, parent), \
        f"admit(10-token prompt) into 8 free blocks of 4: {books(bm, [parent])}"
    child = new_seq(parent.token_ids, 4)
    bm.fork(parent, child)
    assert child.block_table == parent.block_table and child.block_table is not \
        parent.block_table, "the child gets its own list naming the same blocks"
    assert child.num_computed_tokens == 10 and child.block_hashes == parent.block_hashes, \
        f"fork of a 10-token parent: the child has {child.num_computed_tokens} tokens computed " \
        f"and {len(child.block_hashes)} keys; expected 10 and the parent's " \
        f"{len(parent.block_hashes)} keys"
    assert [bm.blocks[i].ref_count for i in parent.block_table] == [2, 2, 2], \
        "each shared block has one reference per holder"
    check_books(bm, [parent, child])


@pytest.mark.task7_3
def test_a_write_to_a_shared_block_copies_it(impl):
    bm = impl.BlockManager(8, 4)
    parent = new_seq(range(6), 4)  # blocks 0 (full) and 1 (2 of 4 tokens)
    assert admit(bm, parent), \
        f"admit(6-token prompt) into 8 free blocks of 4: {books(bm, [parent])}"
    child = new_seq(parent.token_ids, 4)
    bm.fork(parent, child)
    shared = list(parent.block_table)
    bm.take_moves()
    # token 6 goes into the shared, partly filled block 1
    assert decode(bm, parent, 50), \
        f"decode into the shared block {shared[1]}, free blocks left, returned False " \
        f"({books(bm, [parent, child])})"
    moves = bm.take_moves()
    assert parent.block_table[0] == shared[0] and parent.block_table[1] != shared[1], \
        f"the writer keeps the full shared block {shared[0]} and gets a fresh block for the " \
        f"partly filled one: table {parent.block_table}, shared were {shared}"
    assert moves.copies == [(shared[1], parent.block_table[1])], \
        f"one copy recorded, (shared block, new block) = {(shared[1], parent.block_table[1])}; " \
        f"got {moves.copies}"
    assert child.block_table == shared, "the other sample keeps the shared blocks"
    assert [bm.blocks[i].ref_count for i in shared] == [2, 1], \
        f"ref counts of {shared} after the copy: " \
        f"{[bm.blocks[i].ref_count for i in shared]}, expected [2, 1]"
    assert decode(bm, child, 60) and bm.take_moves().copies == [], \
        "the child now holds block 1 alone: it writes in place, no copy"
    assert child.block_table == shared, \
        f"the child wrote in place: its table is {child.block_table}, expected {shared}"
    check_books(bm, [parent, child])


@pytest.mark.task7_3
def test_a_full_shared_block_is_never_copied(impl):
    bm = impl.BlockManager(8, 4)
    parent = new_seq(range(8), 4)  # two full blocks
    assert admit(bm, parent), \
        f"admit(8-token prompt) into 8 free blocks of 4: {books(bm, [parent])}"
    child = new_seq(parent.token_ids, 4)
    bm.fork(parent, child)
    bm.take_moves()
    assert decode(bm, parent, 1) and decode(bm, child, 2), \
        f"decodes after 2 full shared blocks, free blocks left: {books(bm, [parent, child])}"
    assert bm.take_moves().copies == [], "new tokens go into new blocks: nothing to copy"
    assert parent.block_table[:2] == child.block_table[:2] and \
        parent.block_table[2] != child.block_table[2], \
        f"the 2 full blocks stay shared, token 9 goes into a block of its own: parent " \
        f"{parent.block_table}, child {child.block_table}"
    check_books(bm, [parent, child])


@pytest.mark.task7_3
def test_no_free_block_for_the_copy(impl):
    bm = impl.BlockManager(2, 4)
    parent = new_seq(range(6), 4)
    assert admit(bm, parent), \
        f"admit(6-token prompt) into 2 free blocks of 4: {books(bm, [parent])}"
    child = new_seq(parent.token_ids, 4)
    bm.fork(parent, child)
    table = list(parent.block_table)
    assert not decode(bm, parent, 9), "the copy needs a free block and there is none"
    assert parent.block_table == table and bm.take_moves().copies == [] and \
        bm.num_free_blocks == 0, "a failed allocate changes nothing"
    check_books(bm, [parent, child])


@pytest.mark.task7_3
def test_n_samples_write_apart(impl, rng):
    """A prompt forked into n samples, each decoding its own tokens: each reads back its own."""
    size = rng.choice([2, 4, 8])
    bm, memory = impl.BlockManager(64, size), FakeKV(size)
    parent = new_seq([rng.randrange(100) for _ in range(rng.randint(1, 3 * size))], size)
    assert memory.admit(bm, parent), \
        f"admit({parent.num_tokens}-token prompt) into 64 free blocks of {size}: " \
        f"{books(bm, [parent])}"
    samples = [parent]
    for _ in range(rng.randint(1, 4)):
        child = new_seq(parent.token_ids, size)
        bm.fork(parent, child)
        samples.append(child)
    for step in range(2 * size):
        for s in rng.sample(samples, len(samples)):
            assert memory.decode(bm, s, rng.randrange(100)), books(bm, samples)
        check_books(bm, samples)
        memory.check(samples)


operations = st.lists(st.tuples(st.sampled_from(["admit", "decode", "fork", "free"]),
                                st.integers(0, 10 ** 6)), max_size=50)


@pytest.mark.task7_3
@given(ops=operations, num_blocks=st.integers(4, 16), size=st.sampled_from([2, 4]))
def test_any_operations_keep_the_books(impl, ops, num_blocks, size):
    """Property: admissions with shared prefixes, decodes, forks and frees in any order; the
    books balance and every sequence reads its own tokens back."""
    bm, memory, live = impl.BlockManager(num_blocks, size), FakeKV(size), []
    for op, r in ops:
        if op == "admit":
            seq = new_seq([(r >> i) % 3 for i in range(1 + r % 12)], size)
            if memory.admit(bm, seq):
                live.append(seq)
        elif op == "decode" and live:
            memory.decode(bm, live[r % len(live)], r % 3)
        elif op == "fork" and live:
            parent = live[r % len(live)]
            child = new_seq(parent.token_ids, size)
            bm.fork(parent, child)
            live.append(child)
        elif op == "free" and live:
            bm.free(live.pop(r % len(live)))
        check_books(bm, live)
        memory.check(live)
    for seq in live:
        bm.free(seq)
    assert bm.num_free_blocks == num_blocks, "every block free once every sequence is freed"


class FakeKV:
    """KV memory as the tests see it: slot -> the tokens its K/V depend on (all up to it)."""

    def __init__(self, size):
        self.size, self.slots = size, {}

    def _apply_copies(self, bm):
        for src, dst in bm.take_moves().copies:
            for offset in range(self.size):
                self.slots[dst * self.size + offset] = self.slots.get(src * self.size + offset)

    def _write(self, seq, start):
        for t in range(start, seq.num_computed_tokens):
            slot = seq.block_table[t // self.size] * self.size + t % self.size
            self.slots[slot] = tuple(seq.token_ids[:t + 1])

    def admit(self, bm, seq) -> bool:
        if not admit(bm, seq):
            return False
        self._apply_copies(bm)
        self._write(seq, seq.num_cached_tokens)  # the cached blocks hold their K/V already
        return True

    def decode(self, bm, seq, token) -> bool:
        before = seq.num_computed_tokens
        if not decode(bm, seq, token):
            return False
        self._apply_copies(bm)
        self._write(seq, before)
        return True

    def check(self, seqs):
        for seq in seqs:
            for t in range(seq.num_computed_tokens):
                slot = seq.block_table[t // self.size] * self.size + t % self.size
                assert self.slots.get(slot) == tuple(seq.token_ids[:t + 1]), \
                    f"token {t} of {seq.token_ids} reads back K/V computed for " \
                    f"{self.slots.get(slot)} through its table {seq.block_table} (a block " \
                    "adopted for another prefix, or written while another sequence shares it)"


# -- integration: your BlockManager inside the engine -------------------------------------------
@pytest.mark.integration
@pytest.mark.timeout(600)  # two engines; minutes on a loaded 2-core machine
def test_engine_with_your_block_manager(impl):
    from minillm import LLM, SamplingParams
    from minillm.engine.block_manager import BlockManager

    system = "You are a helpful assistant. Answer in one short sentence, kindly. "
    prompts = [system + q for q in ("What is a cat?", "Why is the sky blue?",
                                    "Tell me a story.", "What is a cat?")]
    params = [SamplingParams(temperature=0.8, seed=i, max_tokens=12, ignore_eos=True,
                             n=3 if i == 1 else 1) for i in range(len(prompts))]

    def run(cls):
        # 16 blocks of 8 tokens for 4 running sequences: prefixes are shared, and sequences are
        # preempted (recomputed, finding their prompt in the cache again)
        llm = LLM(block_manager_cls=cls, block_size=8, max_num_seqs=4,
                  num_gpu_blocks_override=16, max_model_len=96)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        stats = llm.engine.scheduler.stats
        return ([[c.token_ids for c in o.outputs] for o in outputs],
                (stats.prefix_cache_hits, stats.prefix_cache_queries, stats.num_preemptions))

    want, got = run(BlockManager), run(impl.BlockManager)
    assert want[1][0] > 0 and want[1][2] > 0, f"the workload should hit and preempt: {want[1]}"
    assert got[1] == want[1], \
        f"(prefix-cache hits, queries, preemptions): {got[1]} with your BlockManager, " \
        f"{want[1]} with minillm's"
    assert got[0] == want[0], "your BlockManager changed the tokens the engine generates"
