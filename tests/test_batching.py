"""minillm.bench.batching: chapter 5's replay of a trace on the real engine (continuous and
static batching), its Gantt data and metrics, and the decode-cost measurement."""
from __future__ import annotations

import math

import pytest

from minillm import LLM, SamplingParams
from minillm.bench.batching import (TraceRequest, decode_step_seconds, gantt_rows, replay,
                                    synthetic_trace)


@pytest.fixture(scope="module")
def engine():
    return LLM(max_num_seqs=3, enable_prefix_caching=False,
               kv_cache_memory_bytes=16 << 20).engine


def seed_example() -> list[TraceRequest]:
    """Chapter 5's example: A, B, C running (A is the shortest); D arrives at step 1."""
    return [TraceRequest("A", 0, list(range(5, 13)), 4),
            TraceRequest("B", 0, list(range(20, 30)), 7),
            TraceRequest("C", 0, list(range(40, 46)), 8),
            TraceRequest("D", 1, list(range(50, 59)), 5)]


def test_continuous_batching_lets_d_join_the_step_after_a_finishes(engine):
    result = replay(engine, seed_example(), clock="steps")
    rows = {name: steps for name, _, steps in gantt_rows(result)}
    # max_num_seqs=3: D waits while A, B, C run, and takes A's place at once.
    assert rows["A"] == [0, 1, 2, 3]
    assert rows["D"][0] == rows["A"][-1] + 1, rows
    assert rows["B"] == list(range(7)) and rows["C"] == list(range(8)), rows
    assert all(len(step) <= 3 for step in result.step_outputs)
    assert not engine.has_unfinished_requests()


def test_static_batching_makes_d_wait_for_the_whole_batch(engine):
    result = replay(engine, seed_example(), clock="steps", static_batch=3)
    rows = {name: steps for name, _, steps in gantt_rows(result)}
    last_of_batch = max(rows[n][-1] for n in "ABC")
    assert rows["D"] == list(range(last_of_batch + 1, last_of_batch + 6)), rows
    # The steps after A finished ran only B and C: the slot A left stayed empty.
    assert result.step_outputs[rows["A"][-1] + 1] == ["B", "C"]


def test_both_policies_generate_the_same_tokens_and_count_them(engine):
    trace = synthetic_trace(6, 0.5, seed=3, vocab_size=4096, prompt_tokens=(4, 20),
                            output_tokens=(2, 9))
    continuous = replay(engine, trace, clock="steps")
    static = replay(engine, trace, clock="steps", static_batch=3)
    for result in (continuous, static):
        assert {rid: len(t.token_times) for rid, t in result.requests.items()} == \
            {r.request_id: r.max_tokens for r in trace}
    summary_c, summary_s = continuous.summary(), static.summary()
    assert summary_c["output_tokens"] == summary_s["output_tokens"] == sum(
        r.max_tokens for r in trace)
    assert summary_c["steps"] <= summary_s["steps"]
    assert summary_c["ttft_p99"] <= summary_s["ttft_p99"]


def test_summary_on_the_step_clock_is_worked_by_hand(engine):
    trace = [TraceRequest("x", 0, [5, 6, 7], 3), TraceRequest("y", 2, [8, 9], 2)]
    result = replay(engine, trace, clock="steps")
    # x: tokens at the ends of steps 0, 1, 2 -> times 1, 2, 3. y arrives at 2, joins step 2
    # (3 tokens of work: x's decode, y's 2-token prompt) -> tokens at times 3, 4.
    assert [t.token_times for t in result.requests.values()] == [[1, 2, 3], [3, 4]]
    assert result.step_tokens == [3, 1, 3, 1]
    summary = result.summary()
    assert summary["ttft_p50"] == pytest.approx(1.0)  # x: 1 - 0, y: 3 - 2
    assert summary["tpot_p99"] == pytest.approx(1.0)
    assert summary["throughput"] == pytest.approx(5 / 4)


def test_idle_gaps_are_skipped_not_slept(engine):
    trace = [TraceRequest("early", 0.0, [5, 6], 2), TraceRequest("late", 3600.0, [7, 8], 2)]
    result = replay(engine, trace, clock="measured")
    late = result.requests["late"]
    assert late.token_times[0] > 3600.0 and result.duration > 3600.0
    assert late.token_times[0] - late.arrival < 60  # TTFT counts only the engine's time


def test_replay_refuses_a_busy_engine_and_a_bad_clock(engine):
    with pytest.raises(ValueError, match="clock"):
        replay(engine, seed_example(), clock="wall")
    engine.add_request("busy", {"prompt_token_ids": [1, 2, 3]}, SamplingParams(max_tokens=2))
    try:
        with pytest.raises(ValueError, match="idle"):
            replay(engine, seed_example())
    finally:
        engine.abort_request("busy")
    assert not engine.has_unfinished_requests()


def test_synthetic_trace_is_seeded_and_poisson():
    a = synthetic_trace(2000, 4.0, seed=1, vocab_size=100, prompt_tokens=(3, 5),
                        output_tokens=(1, 2))
    assert a == synthetic_trace(2000, 4.0, seed=1, vocab_size=100, prompt_tokens=(3, 5),
                                output_tokens=(1, 2))
    gaps = [y.arrival - x.arrival for x, y in zip(a, a[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 4.0, rel=0.1)  # mean gap = 1 / rate
    assert all(3 <= len(r.prompt_token_ids) <= 5 and 1 <= r.max_tokens <= 2 for r in a)
    assert all(0 < t < 100 for r in a for t in r.prompt_token_ids)
    at_once = synthetic_trace(5, math.inf, seed=1, vocab_size=100)
    assert [r.arrival for r in at_once] == [0.0] * 5


def test_decode_step_seconds_times_pure_decode_steps(engine):
    times = decode_step_seconds(engine, [1, 3], context_tokens=8, repeats=2)
    assert set(times) == {1, 3} and all(0 < s < 10 for s in times.values())
    assert engine.stats.last_step_tokens == 3  # the last timed step decoded 3 sequences
    assert not engine.has_unfinished_requests()


def test_plot_gantt_draws_one_cell_per_token(engine):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minillm.bench.batching import plot_gantt

    result = replay(engine, seed_example(), clock="steps")
    fig, ax = plt.subplots()
    plot_gantt(ax, result, "seed example")
    cells = sum(len(c.get_paths()) for c in ax.collections)
    assert cells == 4 + 7 + 8 + 5  # one per output token
    assert [t.get_text() for t in ax.get_yticklabels()] == ["A", "B", "C", "D"]
    plt.close(fig)
