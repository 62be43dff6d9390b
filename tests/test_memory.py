"""The fragmentation demo, KV sizing and the trace replay, each checked a second, independent way."""
import random

import numpy as np
import pytest
import torch

from minillm.memory import contiguous as C
from minillm.memory.contiguous import ContiguousAllocator, best_fit, external_fragmentation, \
    find_holes, first_fit
from minillm.memory.sizing import PRESETS, kv_cache_bytes, kv_cache_bytes_per_token, \
    max_cached_tokens, max_concurrent_requests, memory_per_request, model_shape
from minillm.memory.trace import compare, figures, replay, sharegpt_like_trace


# -- sizing --------------------------------------------------------------------------------------
def test_kv_bytes_match_the_real_cache_tensor(llama_checkpoint):
    from minillm.model import load_model
    from minillm.naive import ContiguousKVCache

    model = load_model(llama_checkpoint, dtype="float32")
    cfg = model.config
    cache = ContiguousKVCache(model, 37)
    real = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
    assert kv_cache_bytes(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 37, 4) == real
    assert model_shape(cfg).kv_bytes_per_token(4) * 37 == real


def test_kv_bytes_known_models():
    # The PagedAttention paper: OPT/LLaMA-13B keeps 800 KB of KV per token in fp16.
    assert PRESETS["Llama-2-13B"].kv_bytes_per_token(2) == 2 * 40 * 5120 * 2 == 819_200
    # GQA: Llama-3-8B has 8 KV heads of 128 -> 128 KiB per token.
    assert PRESETS["Llama-3-8B"].kv_bytes_per_token(2) == 128 * 1024
    assert kv_cache_bytes_per_token(1, 1, 1, 1) == 2


def test_budget_arithmetic():
    per_token = kv_cache_bytes_per_token(32, 8, 128, 2)
    assert max_cached_tokens(10 * per_token + 5, 32, 8, 128, 2) == 10
    assert max_concurrent_requests(10 * per_token, 3, 32, 8, 128, 2) == 3
    m = memory_per_request(PRESETS["Llama-3-8B"], 8192, 4)
    assert m["kv_per_request_gib"] == pytest.approx(1.0)  # 8192 tokens x 128 KiB
    assert m["kv_batch_gib"] == pytest.approx(4.0)
    assert m["total_gib"] == pytest.approx(m["weights_gib"] + 4.0)


# -- the contiguous allocator -------------------------------------------------------------------
def brute_holes(occupied: np.ndarray) -> list[tuple[int, int]]:
    holes, start = [], None
    for i, used in enumerate(list(occupied) + [True]):
        if not used and start is None:
            start = i
        if used and start is not None:
            holes.append((start, i - start))
            start = None
    return holes


def test_holes_fits_and_fragmentation_by_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        capacity = rng.randint(1, 60)
        occupied = np.zeros(capacity, bool)
        regions, cursor = [], 0
        while cursor < capacity:
            cursor += rng.randint(0, 5)
            size = rng.randint(1, 8)
            if cursor + size <= capacity and rng.random() < 0.7:
                regions.append((cursor, size))
                occupied[cursor:cursor + size] = True
            cursor += size
        rng.shuffle(regions)
        holes = find_holes(regions, capacity)
        assert holes == brute_holes(occupied)
        size = rng.randint(1, 10)
        fitting = [h for h in holes if h[1] >= size]
        assert first_fit(holes, size) == (fitting[0][0] if fitting else None)
        assert best_fit(holes, size) == (min(fitting, key=lambda h: (h[1], h[0]))[0]
                                         if fitting else None)
        assert external_fragmentation(holes, size) == sum(h[1] for h in holes if h[1] < size)


def test_first_fit_and_best_fit_place_differently():
    holes = [(0, 10), (20, 4), (40, 6)]
    assert first_fit(holes, 4) == 0 and best_fit(holes, 4) == 20
    assert first_fit(holes, 11) is None and best_fit(holes, 11) is None


@pytest.mark.parametrize("policy", C.POLICIES)
def test_allocator_random_ops_keep_regions_disjoint(policy):
    rng = random.Random(1)
    arena, live = ContiguousAllocator(500, policy), {}
    for rid in range(2000):
        if live and rng.random() < 0.45:
            victim = rng.choice(sorted(live))
            arena.free(victim)
            del live[victim]
        size = rng.randint(1, 80)
        start = arena.allocate(rid, size)
        largest = max((h[1] for h in find_holes(
            [(r.start, r.size) for r in arena.regions.values() if r.request_id != rid], 500)),
            default=0)
        if start is None:
            assert largest < size
            continue
        live[rid] = size
        arena.append(rid, rng.randint(0, size))
        occupancy = np.zeros(500, int)
        for r in arena.regions.values():
            occupancy[r.start:r.start + r.size] += 1
        assert occupancy.max() <= 1
        codes = arena.memory_map()
        assert (codes == C.TOKEN).sum() == arena.num_tokens
        assert (codes == C.RESERVED).sum() == arena.num_reserved - arena.num_tokens
        assert (codes == C.FREE).sum() == arena.num_free == 500 - occupancy.sum()


def test_allocator_errors():
    arena = ContiguousAllocator(10)
    assert arena.allocate("a", 4) == 0
    with pytest.raises(ValueError):
        arena.allocate("a", 1)
    with pytest.raises(ValueError):
        arena.append("a", 5)
    with pytest.raises(ValueError):
        ContiguousAllocator(10, policy="worst_fit")


def test_memory_map_marks_internal_and_external():
    arena = ContiguousAllocator(20)
    arena.allocate("a", 6)   # slots 0-5
    arena.allocate("b", 10)  # slots 6-15
    arena.free("a")          # hole 0-5, hole 16-19
    arena.append("b", 3)
    codes = arena.memory_map(final_lengths={"b": 7}, waiting_size=5)
    assert list(codes[6:16]) == [C.TOKEN] * 3 + [C.RESERVED] * 4 + [C.NEVER_USED] * 3
    assert list(codes[:6]) == [C.FREE] * 6 and list(codes[16:]) == [C.EXTERNAL] * 4
    # a hole exactly the waiting size fits it; a request without a final length is all reserved
    codes = arena.memory_map(final_lengths={}, waiting_size=4)
    assert list(codes[6:16]) == [C.TOKEN] * 3 + [C.RESERVED] * 7
    assert list(codes[16:]) == [C.FREE] * 4


# -- the trace ----------------------------------------------------------------------------------
def test_trace_is_seeded_and_sane():
    a, b = sharegpt_like_trace(500, seed=3), sharegpt_like_trace(500, seed=3)
    assert a == b and a != sharegpt_like_trace(500, seed=4)
    arrivals = [r.arrival_step for r in a]
    assert arrivals == sorted(arrivals)
    for r in a:
        assert 1 <= r.prompt_len and 2 <= r.output_len <= r.max_tokens
        assert r.reservation <= 2048
    prompts = np.array([r.prompt_len for r in a])
    outputs = np.array([r.output_len for r in a])
    # log-normal with the paper's ShareGPT means, clipped: means near 161 and 338
    assert 120 < prompts.mean() < 200 and 250 < outputs.mean() < 380
    assert np.median(prompts) < prompts.mean()  # right-skewed, as chat traffic is


# -- the replay ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_results():
    trace = sharegpt_like_trace(60, seed=1, arrival_rate=0.5)
    return trace, {name: replay(trace, 4096, name, map_every=1)
                   for name in ("first_fit", "best_fit", "paged")}


def test_every_request_finishes(small_results):
    trace, results = small_results
    for res in results.values():
        assert res.finished == len(trace)
        assert res.output_tokens == sum(r.output_len for r in trace)


def test_waste_recounted_from_the_memory_map(small_results):
    """The accounting (from request lengths) must equal a recount of the drawn memory map."""
    _, results = small_results
    for res in results.values():
        assert len(res.maps) == len(res.steps)
        for usage, codes in zip(res.steps, res.maps):
            count = np.bincount(codes, minlength=6)
            assert count[C.TOKEN] == usage.tokens
            assert count[C.RESERVED] == usage.reservation
            assert count[C.NEVER_USED] + count[C.TAIL] == usage.internal
            assert count[C.EXTERNAL] == usage.external
            assert count[C.FREE] == usage.free
            assert usage.in_use + usage.free == res.capacity


def test_paged_internal_fragmentation_is_under_one_block_per_request(small_results):
    _, results = small_results
    for usage in results["paged"].steps:
        assert 0 <= usage.internal <= usage.running * 15, usage
        assert usage.reservation == usage.external == 0, usage
    assert "tail" not in figures(results)  # the paper's name: internal fragmentation


def test_replay_takes_another_allocator_class(small_results):
    """The labs' integration hook: a class of the same interface replaces minillm's."""
    from minillm.engine.block_manager import BlockManager

    made = []

    class CountingManager(BlockManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    class CountingArena(ContiguousAllocator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    trace, results = small_results
    for name, cls in (("paged", CountingManager), ("best_fit", CountingArena)):
        res = replay(trace, 4096, name, map_every=1, allocator_cls=cls)
        assert isinstance(made[-1], cls) and res.steps == results[name].steps, name
        assert all((a == b).all() for a, b in zip(res.maps, results[name].maps)), name


def test_paged_blocks_are_never_shared():
    trace = sharegpt_like_trace(40, seed=2, arrival_rate=1.0)
    res = replay(trace, 2048, "paged", map_every=1)
    assert res.preemptions > 0  # a tight budget: preemption must happen and still finish all
    assert res.finished == len(trace)


def test_replay_figures_meet_the_targets():
    """The benchmark's configuration: paged waste <= 4 %, contiguous in the paper's range."""
    from minillm.bench.memory import CAPACITY, NUM_REQUESTS, SEED, ARRIVAL_RATE

    results = compare(sharegpt_like_trace(NUM_REQUESTS, SEED, ARRIVAL_RATE), CAPACITY)
    paged = results["paged"].summary()
    assert paged["waste_share"] <= 0.04
    for name in ("first_fit", "best_fit"):
        s = results[name].summary()
        assert 0.20 <= s["token_share"] <= 0.40
        assert s["external_share"] > 0 and s["internal_share"] > 0
        assert paged["mean_running"] / s["mean_running"] > 2
    table = figures(results)
    assert "paged" in table and "contiguous/first_fit" in table


# -- the functions behind the chapters' widgets ------------------------------------------------
def test_decode_bound():
    from minillm.memory.sizing import decode_tokens_per_second_bound

    # 1 GB of weights, no KV, 1 GB/s: one step a second, one token per request per step
    assert decode_tokens_per_second_bound(1e9, 0, 1, 1.0) == pytest.approx(1.0)
    assert decode_tokens_per_second_bound(1e9, 0, 8, 1.0) == pytest.approx(8.0)
    # KV reads make batching less than linear
    assert decode_tokens_per_second_bound(1e9, 1e8, 8, 1.0) == pytest.approx(8 / 1.8)


def test_step_views(small_results):
    _, results = small_results
    res = results["first_fit"]
    assert res.usage_at(-5) is res.steps[0] and res.usage_at(10 ** 9) is res.steps[-1]
    step, codes = res.map_at(7)
    assert step == 7 and codes is res.maps[7]
    text = res.usage_at(7).describe(res.capacity)
    assert text.startswith("step 7:") and "real tokens" in text and "free" in text
    sparse = replay(sharegpt_like_trace(20, seed=1), 4096, "paged", map_every=10)
    assert sparse.map_at(25)[0] == 20 and sparse.map_at(9)[0] == 0
    with pytest.raises(ValueError):
        replay(sharegpt_like_trace(5, seed=1), 4096, "paged").map_at(0)


def test_plots_draw(small_results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minillm.memory.plots import plot_breakdown, plot_map_row, plot_memory_map

    _, results = small_results
    fig, axes = plt.subplots(3)
    plot_memory_map(axes[0], results["first_fit"], max_step=50)
    plot_map_row(axes[1], results["paged"].maps[3])
    plot_breakdown(axes[2], results)
    plt.close(fig)


def test_block_table_picture_labels_every_token_in_its_slot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minillm.engine.block_manager import BlockManager
    from minillm.engine.sequence import Sequence
    from minillm.memory.plots import plot_block_tables

    manager = BlockManager(6, 4, enable_prefix_caching=False)
    seqs = {"A": Sequence(list(range(6)), 4), "B": Sequence(list(range(3)), 4)}
    for seq in seqs.values():
        manager.allocate(seq, seq.num_tokens)
        seq.num_computed_tokens = seq.num_tokens
    fig, ax = plt.subplots()
    plot_block_tables(ax, manager, seqs)
    # each label sits in the cell of its slot: block_table[t // 4], offset t % 4
    where = {text.get_text(): text.get_position() for text in ax.texts}
    for name, seq in seqs.items():
        for t in range(seq.num_tokens):
            x, y = where[f"{name}{t}"]
            assert (int(x), int(y)) == (t % 4, seq.block_table[t // 4]), (name, t)
    assert len(ax.texts) == 9 and ax.get_ylim() == (6, 0)
    plt.close(fig)


def test_environment_checks_report_without_raising():
    from minillm.envcheck import check_environment, measure_bandwidth

    checks = {c.name: c for c in check_environment()}
    assert {"python", "torch", "device", "triton", "model"} <= checks.keys()
    assert checks["python"].ok and checks["torch"].ok
    assert all(c.line().startswith(("ok ", "-- ")) for c in checks.values())
    assert measure_bandwidth(megabytes=8, repeats=1) > 0


# -- chapter 1's metrics ------------------------------------------------------------------------
def test_serving_metrics_on_a_fake_clock():
    from types import SimpleNamespace

    from minillm.bench.challenge import cost_per_million_tokens, serve_one_at_a_time, \
        serving_metrics, time_per_output_token, time_to_first_token

    now = [0.0]

    class FakeGenerator:
        tokenizer = SimpleNamespace(encode=lambda text: text.split())

        def generate(self, prompt, max_new_tokens):
            n = len(prompt)  # a request of n characters makes n tokens in n seconds
            now[0] += n
            return SimpleNamespace(token_ids=list(range(n)), ttft_s=1.0, latency_s=float(n))

    records = serve_one_at_a_time(FakeGenerator(), ["aa", "bbbb"], max_new_tokens=10,
                                  clock=lambda: now[0])
    assert [time_to_first_token(r) for r in records] == [1.0, 3.0]  # the second waited 2 s
    assert [r.latency_s for r in records] == [2.0, 6.0]
    assert [time_per_output_token(r) for r in records] == [1.0, 1.0]  # (2-1)/1, (6-3)/3
    m = serving_metrics(records)
    assert m["throughput_tok_s"] == pytest.approx(6 / 6)
    assert m["ttft_p50_s"] == pytest.approx(2.0) and m["ttft_p99_s"] == pytest.approx(2.98)
    # chapter 3's measure, step by step: cache 1, 2 of 11 slots; then 1, 2, 3, 4 of 11
    assert m["kv_utilisation"] == pytest.approx((1 + 2 + 1 + 2 + 3 + 4) / (6 * 11))
    assert cost_per_million_tokens(3.6, 1000) == pytest.approx(1.0)
    assert cost_per_million_tokens(2.0, 0) == float("inf")


def test_percentile_and_goodput_by_hand():
    from minillm.bench.challenge import RequestRecord, goodput, percentile

    assert percentile([3, 1, 2], 50) == 2 and percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20], 99) == pytest.approx(19.9)
    assert np.isclose(percentile(list(range(101)), 37.5), np.percentile(range(101), 37.5))
    with pytest.raises(ValueError):
        percentile([], 50)
    # (arrival, first token, end, tokens): TTFT 0.5 (at the limit), TPOT 0.25 (at the limit),
    # TTFT too slow, a single token judged on its TTFT alone
    records = [RequestRecord(1, 3, 9, 0.0, 0.5, 1.0), RequestRecord(1, 5, 9, 0.0, 1.5, 2.0),
               RequestRecord(1, 1, 9, 1.0, 1.25, 1.25), RequestRecord(1, 2, 9, 0.0, 0.25, 4.0)]
    assert goodput(records, ttft_limit_s=0.5, tpot_limit_s=0.25) == pytest.approx(2 / 4)
