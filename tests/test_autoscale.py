"""minillm.bench.autoscale: capacity at an SLO, the HPA's rule, and the simulation, against
Kubernetes' documented examples, hand-worked queues and an independent transcription of the
controller's stabilization loop."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from minillm.bench.autoscale import (HPAPolicy, Replica, capacity_at_slo, desired_replicas,
                                     hpa_policy, load_trace, simulate, stabilized_replicas)


def run(rate, p99_ttft, p99_tpot, mean_ttft=1.0, mean_tpot=1.0):
    return {"request_throughput": rate, "p99_ttft_ms": p99_ttft, "p99_tpot_ms": p99_tpot,
            "mean_ttft_ms": mean_ttft, "mean_tpot_ms": mean_tpot}


def test_capacity_is_the_best_throughput_whose_p99_met_the_slo():
    sweep = [run(1.0, 100, 20), run(2.0, 480, 40), run(3.0, 500, 50), run(4.0, 900, 45, 300, 30)]
    # 3.0 meets both limits exactly (included); 4.0's mean is within the SLO, its p99 is not.
    assert capacity_at_slo(sweep, ttft_ms=500, tpot_ms=50) == 3.0
    assert capacity_at_slo(sweep, ttft_ms=500, tpot_ms=39) == 1.0
    assert capacity_at_slo(sweep, ttft_ms=50, tpot_ms=50) == 0.0


@pytest.mark.parametrize("current, metric, target, expected", [
    (3, 200, 100, 6),    # Kubernetes' docs: 200m against 100m doubles the replicas
    (4, 50, 100, 2),     # 50m against 100m halves them
    (3, 105, 100, 3),    # ratio 1.05: within the default tolerance of 0.1, no change
    (3, 95, 100, 3),     # ratio 0.95: within it on the way down too
    (3, 112, 100, 4),    # 3 x 1.12 = 3.36 -> ceil -> 4 (round would give 3)
    (5, 10, 100, 1),     # ceil(0.5) = 1
    (2, 1000, 100, 8),   # 20 wanted, maxReplicas 8
    (4, 0, 100, 1),      # 0 wanted, minReplicas 1
])
def test_desired_replicas(current, metric, target, expected):
    got = desired_replicas(current, metric, target, tolerance=0.1, min_replicas=1, max_replicas=8)
    assert got == expected, (current, metric, target)


def test_desired_replicas_stays_within_its_bounds():
    assert desired_replicas(4, 0, 100, 0.1, min_replicas=3, max_replicas=8) == 3
    assert desired_replicas(4, 300, 100, 0.1, min_replicas=3, max_replicas=8) == 8


def kubernetes_stabilize(current, recommendations, now, up_window, down_window):
    """A line-by-line transcription of the HPA controller's stabilizeRecommendationWithBehaviors
    (the newest recommendation kept apart, as the controller keeps it)."""
    *older, (_, newest) = recommendations
    up_rec = down_rec = newest
    for when, rec in older:
        if when > now - up_window:
            up_rec = min(rec, up_rec)
        if when > now - down_window:
            down_rec = max(rec, down_rec)
    result = current
    if result < up_rec:
        result = up_rec
    if result > down_rec:
        result = down_rec
    return result


def test_stabilization_matches_the_controller_on_random_histories():
    rng = random.Random(7)
    for _ in range(500):
        history = [(t, rng.randint(1, 10)) for t in range(0, 15 * rng.randint(1, 40), 15)]
        now, current = history[-1][0], rng.randint(1, 10)
        up, down = rng.choice([0, 15, 60]), rng.choice([0, 60, 300])
        assert stabilized_replicas(current, history, now, up, down) == \
            kubernetes_stabilize(current, history, now, up, down), (current, history, up, down)


def test_a_scale_down_waits_for_the_window():
    # 6 replicas asked at t=0, then 2 from t=15: with a 60 s window the 6 holds while it is
    # younger than 60 s (the controller keeps recommendations strictly after now - window)
    history = [(0, 6)] + [(t, 2) for t in range(15, 91, 15)]
    got = [stabilized_replicas(6, history[:i + 1], t, 0, 60) for i, (t, _) in enumerate(history)]
    assert got == [6, 6, 6, 6, 2, 2, 2], got


def test_constant_load_below_capacity_never_queues():
    sim = simulate([3.0] * 120, Replica(4.0, 1.0), HPAPolicy("concurrency", 10, 1, 1))
    assert sim.waiting.max() == 0 and sim.wait_s.max() == 0
    assert sim.replica_seconds() == 120 and sim.slo_attainment(0) == 1.0


def test_an_overloaded_fixed_fleet_queues_as_worked_by_hand():
    # 6 req/s into one replica serving 4: the queue grows by 2 each second; the requests of
    # second t are served once 4 x (s + 1) >= 6 x (t + 1), i.e. they wait ceil(1.5 t + 0.5) - t s
    sim = simulate([6.0] * 10, Replica(4.0, 1.0), HPAPolicy("concurrency", 10, 1, 1))
    assert sim.waiting.tolist() == [2.0 * (t + 1) for t in range(10)]
    want = [math.ceil(1.5 * t + 0.5) - t for t in range(6)]  # later seconds are never served
    assert sim.wait_s[:6].tolist() == want, sim.wait_s
    assert np.isinf(sim.wait_s[6:]).all()


def test_a_new_replica_serves_only_after_its_start_up():
    # 10 req/s, replicas of 4 req/s: the first sync (t=14) asks for ceil(1 x in-flight / 4) = 3
    # or more; they serve from t = 15 + 30.
    sim = simulate([10.0] * 120, Replica(4.0, 1.0, startup_s=30), HPAPolicy("concurrency", 4, 1, 3))
    assert sim.replicas[14] == 1 and sim.replicas[15] == 3
    assert sim.ready[44] == 1 and sim.ready[45] == 3
    assert sim.waiting[45:].max() < sim.waiting[44]  # the queue drains once they serve


def test_load_trace_is_seeded_and_bounded():
    a, b = load_trace(3, 600, 2.0, 20.0), load_trace(3, 600, 2.0, 20.0)
    assert np.array_equal(a, b) and not np.array_equal(a, load_trace(4, 600, 2.0, 20.0))
    assert len(a) == 600 and a.min() >= 0 and 12 < a.max() <= 50 and 2 <= a.mean() <= 20


def test_the_reference_policy_meets_the_slo_without_oscillating_and_no_window_oscillates():
    replica = Replica(4.0, 2.0, startup_s=60)
    for seed in range(5):
        trace = load_trace(seed, 3600, 2.0, 30.0)
        policy = hpa_policy(replica, 30.0, 2.0)
        sim = simulate(trace, replica, policy)
        eager = simulate(trace, replica, HPAPolicy(policy.metric, policy.target,
                                                   policy.min_replicas, policy.max_replicas,
                                                   down_window_s=0))
        # one rise and fall per hump of the load (the day and 2 bursts): 5 turns at most
        assert sim.slo_attainment(5) >= 0.97 and sim.reversals() <= 5, \
            (seed, sim.slo_attainment(5), sim.reversals())
        assert eager.reversals() >= sim.reversals() + 4, (seed, eager.reversals())


def test_a_policy_refuses_bad_bounds_and_metrics():
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        HPAPolicy("concurrency", 1.0, 3, 2)
    with pytest.raises(ValueError, match="choose one of"):
        HPAPolicy("cpu", 80)
