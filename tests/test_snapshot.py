"""The engine snapshot (chapter 8's block map, the /dashboard): every block's state and owners
agree with the block manager's own books after every step, reference counts are conserved, and
once every request has finished each block is free or cached."""
import json
from collections import Counter

import pytest
import torch

from minillm import LLM, SamplingParams
from minillm.engine.snapshot import BLOCK_STATES, snapshot

BLOCK_SIZE = 8


def small_llm(path, mode: str = "recompute") -> LLM:
    return LLM(str(path), block_size=BLOCK_SIZE, num_gpu_blocks_override=24, max_model_len=96,
               attention_backend="torch", preemption_mode=mode)


def add_workload(engine, seed: int) -> None:
    """Prompts sharing a 20-token system prompt, one with n=3 parallel samples: blocks get
    shared, cached and (on 24 blocks) preempted."""
    g = torch.Generator().manual_seed(seed)
    system = torch.randint(2, 384, (20,), generator=g).tolist()
    for i in range(6):
        user = torch.randint(2, 384, (int(torch.randint(3, 30, (1,), generator=g)),),
                             generator=g).tolist()
        params = SamplingParams(n=3 if i == 2 else 1, temperature=0.8, seed=i,
                                max_tokens=int(torch.randint(4, 30, (1,), generator=g)),
                                ignore_eos=True)
        engine.add_request(f"s{seed}-{i}", {"prompt_token_ids": system + user}, params)


def check_against_block_manager(engine, snap) -> None:
    bm, sched = engine.block_manager, engine.scheduler
    assert snap.num_blocks == bm.num_blocks
    assert snap.num_free == bm.num_free_blocks, (snap.figures(), bm.num_free_blocks)
    assert sum(snap.count(s) for s in BLOCK_STATES) == bm.num_blocks
    holders = Counter(b for seq in sched.running for b in seq.block_table)
    for info in snap.blocks:
        block = bm.blocks[info.block_id]
        where = f"block {info.block_id} ({info})"
        assert info.ref_count == block.ref_count == holders[info.block_id] == len(info.owners), \
            where
        free = info.block_id in bm.free_block_ids
        assert (info.state in ("free", "cached")) == free, where
        assert free == (block.ref_count == 0), where
        assert (info.state == "shared") == (block.ref_count > 1), where
        assert (info.state == "cached") == (free and block.hash in bm.cached), where
    # Reference counts conserved: one per entry of a running sequence's block table.
    assert sum(b.ref_count for b in snap.blocks) == sum(len(s.block_table) for s in sched.running)
    for queue, infos in ((sched.waiting, snap.waiting), (sched.running, snap.running),
                         (sched.swapped, snap.swapped)):
        assert [(s.request_id, s.index, len(s.block_table)) for s in queue] == \
            [(i.request_id, i.index, i.num_blocks) for i in infos]
    assert snap.prefix_cache_hits == sched.stats.prefix_cache_hits
    assert snap.num_preemptions == sched.stats.num_preemptions


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_snapshot_agrees_with_the_block_manager_at_every_step(llama_checkpoint, mode):
    engine = small_llm(llama_checkpoint, mode).engine
    add_workload(engine, seed={"recompute": 1, "swap": 2}[mode])
    seen = Counter()
    while engine.has_unfinished_requests():
        engine.step()
        snap = snapshot(engine)
        check_against_block_manager(engine, snap)
        seen.update(b.state for b in snap.blocks)
        seen["swapped"] += bool(snap.swapped)
    assert seen["shared"] and seen["owned"], f"the workload shares no block: {seen}"
    assert snap.num_preemptions > 0, "24 blocks should preempt this workload"
    if mode == "swap":
        assert seen["swapped"], "no step saw a swapped sequence"

    # After the last request: every block free or cached, nothing held, nothing queued.
    snap = snapshot(engine)
    assert {b.state for b in snap.blocks} <= {"free", "cached"}, snap.figures()
    assert snap.num_cached > 0, "the shared system prompt's blocks should stay cached"
    assert not (snap.waiting or snap.running or snap.swapped)
    assert all(b.owners == [] for b in snap.blocks)
    assert snap.num_free_cpu_blocks == snap.num_cpu_blocks


def test_hit_rate_and_json(llama_checkpoint):
    engine = small_llm(llama_checkpoint).engine
    add_workload(engine, seed=3)
    engine.step()
    snap = snapshot(engine)
    stats = engine.scheduler.stats
    assert snap.prefix_cache_hit_rate == pytest.approx(
        stats.prefix_cache_hits / stats.prefix_cache_queries)
    data = json.loads(json.dumps(snap.to_dict()))
    assert len(data["blocks"]) == data["figures"]["num_blocks"] == engine.block_manager.num_blocks
    assert data["figures"]["free"] == engine.block_manager.num_free_blocks
    assert {b["state"] for b in data["blocks"]} <= set(BLOCK_STATES)
    assert [r["request_id"] for r in data["running"]] == \
        [s.request_id for s in engine.scheduler.running]
    while engine.has_unfinished_requests():
        engine.step()


def hand_built():
    """Two sequences share two prefix blocks (a fork); a third sequence came and went."""
    from types import SimpleNamespace

    from minillm.engine.block_manager import BlockManager
    from minillm.engine.scheduler import SchedulerStats
    from minillm.engine.sequence import Sequence

    bm = BlockManager(6, 4)
    a, b, c = (Sequence(list(range(n)), 4, request_id=name) for n, name in
               ((6, "a"), (0, "b"), (3, "c")))
    for seq in (a, c):
        assert bm.allocate(seq, seq.num_tokens)
        seq.num_computed_tokens = seq.num_tokens
        bm.cache_full_blocks(seq)
    bm.fork(a, b)
    bm.free(c)  # c's block is free again, its contents not cached (it was not full)
    engine = SimpleNamespace(block_manager=bm, stats=SimpleNamespace(num_steps=0),
                             scheduler=SimpleNamespace(running=[a, b], waiting=[], swapped=[],
                                                       stats=SchedulerStats()))
    return engine, a, b


def test_a_shared_block_names_each_holder():
    engine, a, b = hand_built()
    snap = snapshot(engine)
    states = {i.block_id: (i.state, i.owners) for i in snap.blocks}
    assert states[a.block_table[0]] == ("shared", ["a", "b"])
    assert states[a.block_table[1]] == ("shared", ["a", "b"])
    assert snap.figures()["free"] == 4 and snap.count("shared") == 2
    engine.block_manager.free(a), engine.block_manager.free(b)
    engine.scheduler.running = []
    snap = snapshot(engine)
    # a's first block was full and is cached; its second (2 of 4 tokens) was not
    assert snap.count("cached") == 1 and snap.count("free") == 5, snap.figures()


def test_block_map_picture():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minillm.memory.plots import plot_block_map

    engine, a, _ = hand_built()
    fig, ax = plt.subplots()
    plot_block_map(ax, snapshot(engine), columns=4)
    where = {t.get_text(): t.get_position() for t in ax.texts}
    for block in range(6):  # each label in its cell: column block % 4, row block // 4
        label = f"{block}\n×2" if block in a.block_table else f"{block}"
        x, y = where[label]
        assert (int(x), int(y)) == (block % 4, block // 4), label
    assert ax.get_title() == "2 blocks held (2 shared), 0 cached, 4 free"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["request a", "request b", "shared (×refs)", "cached, free", "free"], legend
    plt.close(fig)
