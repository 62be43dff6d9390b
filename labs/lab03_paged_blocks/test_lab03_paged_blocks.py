"""Lab 3 tests. `make grade LAB=lab03` grades all tasks, `make grade LAB=lab03 TASK=3.3` one."""
import random

import pytest

from minillm.engine.sequence import Sequence

STARTER = "block_manager.py"
REFERENCE = "minillm.engine.block_manager"


def new_seq(prompt_len: int, block_size: int = 16) -> Sequence:
    return Sequence(list(range(prompt_len)), block_size)


def prefill(manager, seq) -> bool:
    """What the scheduler does for a new sequence: blocks for the whole prompt."""
    ok = manager.allocate(seq, seq.num_tokens - seq.num_computed_tokens)
    if ok:
        seq.num_computed_tokens = seq.num_tokens
    return ok


def decode(manager, seq) -> bool:
    """One decode step: the token sampled last gets a slot."""
    seq.append_token(7)
    ok = manager.allocate(seq, 1)
    if ok:
        seq.num_computed_tokens += 1
    return ok


def slot(seq, t, block_size=16):
    return seq.block_table[t // block_size] * block_size + t % block_size


@pytest.mark.task3_1
@pytest.mark.parametrize("tokens,size,blocks", [(0, 16, 0), (1, 16, 1), (16, 16, 1), (17, 16, 2),
                                                (100, 16, 7), (128, 32, 4), (129, 32, 5)])
def test_blocks_for(impl, tokens, size, blocks):
    assert impl.blocks_for(tokens, size) == blocks


@pytest.mark.task3_2
def test_prompt_gets_its_blocks(impl):
    manager = impl.BlockManager(10, 16, enable_prefix_caching=False)
    seq = new_seq(40)
    assert manager.can_allocate(seq, 40)
    assert prefill(manager, seq)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    assert all(0 <= b < 10 for b in seq.block_table)
    assert manager.num_free_blocks == 7


@pytest.mark.task3_2
def test_all_or_nothing(impl):
    manager = impl.BlockManager(4, 16, enable_prefix_caching=False)
    big = new_seq(65)  # needs 5 blocks
    assert not manager.can_allocate(big, 65)
    assert manager.allocate(big, 65) is False
    assert big.block_table == [] and manager.num_free_blocks == 4
    small = new_seq(64)
    assert prefill(manager, small) and manager.num_free_blocks == 0


@pytest.mark.task3_2
def test_sequences_never_share_slots(impl):
    rng = random.Random(0)
    manager = impl.BlockManager(64, 16, enable_prefix_caching=False)
    seqs = []
    while True:
        seq = new_seq(rng.randint(1, 70))
        if not prefill(manager, seq):
            break
        seqs.append(seq)
    slots = [slot(s, t) for s in seqs for t in range(s.num_tokens)]
    assert len(slots) == len(set(slots))
    assert all(0 <= x < 64 * 16 for x in slots)
    used = sum(len(s.block_table) for s in seqs)
    assert manager.num_free_blocks == 64 - used


@pytest.mark.task3_3
def test_decode_adds_a_block_only_when_the_last_is_full(impl):
    manager = impl.BlockManager(8, 4, enable_prefix_caching=False)
    seq = new_seq(3, block_size=4)
    assert prefill(manager, seq) and len(seq.block_table) == 1
    tables = []
    for _ in range(9):  # tokens 4 .. 12
        assert decode(manager, seq)
        tables.append(len(seq.block_table))
    # token counts 4,5,...,12 -> blocks 1,2,2,2,2,3,3,3,3
    assert tables == [1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert manager.num_free_blocks == 5


@pytest.mark.task3_3
def test_decode_runs_out_cleanly(impl):
    manager = impl.BlockManager(2, 4, enable_prefix_caching=False)
    seq = new_seq(8, block_size=4)
    assert prefill(manager, seq)
    table = list(seq.block_table)
    assert not manager.can_allocate(seq, 1)
    assert decode(manager, seq) is False  # no free block for token 8
    assert seq.block_table == table and manager.num_free_blocks == 0


@pytest.mark.task3_3
def test_growing_keeps_earlier_blocks(impl):
    manager = impl.BlockManager(32, 16, enable_prefix_caching=False)
    a, b = new_seq(20), new_seq(5)
    assert prefill(manager, a) and prefill(manager, b)
    first_a, first_b = list(a.block_table), list(b.block_table)
    for _ in range(40):
        assert decode(manager, a) and decode(manager, b)
    assert a.block_table[:len(first_a)] == first_a and b.block_table[:len(first_b)] == first_b
    assert len(a.block_table) == 4 and len(b.block_table) == 3  # 60 and 45 tokens
    assert not set(a.block_table) & set(b.block_table)


@pytest.mark.task3_4
def test_free_returns_every_block(impl):
    manager = impl.BlockManager(16, 16, enable_prefix_caching=False)
    a, b = new_seq(50), new_seq(30)
    prefill(manager, a), prefill(manager, b)
    assert manager.num_free_blocks == 16 - 4 - 2
    manager.free(a)
    assert a.block_table == [] and manager.num_free_blocks == 14
    manager.free(b)
    assert manager.num_free_blocks == 16


@pytest.mark.task3_4
def test_freed_blocks_are_reused(impl):
    manager = impl.BlockManager(4, 16, enable_prefix_caching=False)
    a = new_seq(64)
    assert prefill(manager, a)
    blocks = set(a.block_table)
    manager.free(a)
    b = new_seq(64)
    assert prefill(manager, b) and set(b.block_table) == blocks


@pytest.mark.task3_4
def test_churn_conserves_blocks(impl):
    """Many sequences come and go: free + held always adds up, nothing is held twice."""
    rng = random.Random(1)
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
        assert len(held) == len(set(held))
        assert manager.num_free_blocks + len(held) == 50
