"""Lab 9 tests. `make grade LAB=lab09` grades all tasks, `make grade LAB=lab09 TASK=9.2` one.

Inputs are drawn fresh each run (the `rng` fixture; the header prints the seed): bench sweeps,
HPA histories, replicas and load traces that no one has seen before. 9.1 and 9.2 are checked
against plain computations written here; 9.3 runs your policy through the simulation on hidden
load traces and compares it with the reference's policy on the same traces.
`make grade LAB=lab09 INTEGRATION=1` also runs the simulation with your 9.2 rules in the HPA's
place and wants the reference's replica counts, second by second.
"""
from __future__ import annotations

import dataclasses
import math

import pytest

from minillm.bench import autoscale as reference
from minillm.bench.autoscale import HPAPolicy, Replica, load_trace, simulate

STARTER = "capacity.py"
REFERENCE = "minillm.bench.autoscale"


# -- 9.1 capacity at an SLO ---------------------------------------------------------------------
def bench_sweep(rng, runs: int) -> list[dict]:
    """`bench serve` results at rising rates: latencies grow with the load, each p99 well above
    its mean (a long tail)."""
    results, ttft, tpot = [], rng.uniform(20, 80), rng.uniform(5, 20)
    for i in range(runs):
        ttft, tpot = ttft * rng.uniform(1.1, 1.8), tpot * rng.uniform(1.05, 1.5)
        results.append({"request_rate": i + 1.0, "request_throughput": (i + 1) * rng.uniform(0.9, 1.0),
                        "p99_ttft_ms": round(ttft, 1), "p99_tpot_ms": round(tpot, 1),
                        "mean_ttft_ms": round(ttft * rng.uniform(0.2, 0.6), 1),
                        "mean_tpot_ms": round(tpot * rng.uniform(0.5, 0.8), 1)})
    rng.shuffle(results)  # the files come in any order
    return results


def expected_capacity(results, ttft_ms, tpot_ms):
    ok = [r["request_throughput"] for r in results
          if r["p99_ttft_ms"] <= ttft_ms and r["p99_tpot_ms"] <= tpot_ms]
    return max(ok) if ok else 0.0


def describe(results) -> str:
    return "; ".join(f"{r['request_throughput']:.2f} req/s: p99 TTFT {r['p99_ttft_ms']} "
                     f"TPOT {r['p99_tpot_ms']} (mean {r['mean_ttft_ms']}, {r['mean_tpot_ms']})"
                     for r in sorted(results, key=lambda r: r["request_throughput"]))


@pytest.mark.task9_1
def test_capacity_is_the_best_throughput_whose_p99_met_the_slo(impl, rng):
    for _ in range(20):
        results = bench_sweep(rng, rng.randint(2, 8))
        pick = rng.choice(results)  # limits exactly at one run's p99s, or between two runs'
        ttft = pick["p99_ttft_ms"] + rng.choice([0.0, 0.0, 3.3])
        tpot = pick["p99_tpot_ms"] + rng.choice([0.0, 0.0, 1.7])
        got, want = impl.capacity_at_slo(results, ttft, tpot), expected_capacity(results, ttft, tpot)
        assert got == want, (f"capacity_at_slo at TTFT <= {ttft} ms, TPOT <= {tpot} ms: {got}, "
                             f"expected {want}. Runs: {describe(results)}")


@pytest.mark.task9_1
def test_capacity_is_judged_on_the_p99_not_the_mean(impl):
    results = [{"request_throughput": 2.0, "p99_ttft_ms": 300, "p99_tpot_ms": 40,
                "mean_ttft_ms": 100, "mean_tpot_ms": 20},
               {"request_throughput": 4.0, "p99_ttft_ms": 1400, "p99_tpot_ms": 45,
                "mean_ttft_ms": 350, "mean_tpot_ms": 30}]
    got = impl.capacity_at_slo(results, 500, 50)
    assert got == 2.0, (f"capacity_at_slo at TTFT <= 500 ms: {got}, expected 2.0: the run at "
                        f"4 req/s has a mean TTFT of 350 ms but a p99 of 1400 ms; one request in "
                        f"a hundred waits 1.4 s, so it does not meet the SLO")
    assert impl.capacity_at_slo(results, 200, 50) == 0.0, \
        "no run has p99 TTFT <= 200 ms: the capacity at that SLO is 0.0"


@pytest.mark.task9_1
def test_replicas_needed(impl, rng):
    for _ in range(200):
        per_replica = rng.choice([rng.uniform(0.1, 20), float(rng.randint(1, 8))])
        target = rng.choice([rng.uniform(0, 200), per_replica * rng.randint(1, 30),
                             per_replica * (rng.randint(1, 30) + 0.2)])
        want = max(1, math.ceil(target / per_replica))
        got = impl.replicas_needed(target, per_replica)
        assert got == want, (f"replicas_needed({target!r}, {per_replica!r}): {got}, expected "
                             f"{want} (load / capacity = {target / per_replica:.3f})")


@pytest.mark.task9_1
def test_replicas_needed_at_the_edges(impl):
    assert impl.replicas_needed(6.6, 3.0) == 3, "6.6 req/s at 3 req/s each: 2.2 replicas' " \
                                                "worth, so 3 (2 would leave 0.6 req/s unserved)"
    assert impl.replicas_needed(9.0, 3.0) == 3, "9 req/s at 3 req/s each: exactly 3"
    assert impl.replicas_needed(0.0, 3.0) == 1, "no load still needs one replica"
    with pytest.raises(ValueError, match="met the SLO for no request"):
        impl.replicas_needed(5.0, 0.0)


# -- 9.2 the HPA's rule -------------------------------------------------------------------------
def expected_desired(current, metric, target, tolerance, low, high):
    ratio = metric / target
    desired = current if abs(ratio - 1) <= tolerance else math.ceil(current * ratio)
    return min(max(desired, low), high)


@pytest.mark.task9_2
def test_desired_replicas_on_random_metrics(impl, rng):
    for _ in range(300):
        current, target = rng.randint(1, 12), rng.choice([1.0, 4.0, 10.0, 80.0])
        tolerance = rng.choice([0.0, 0.05, 0.1, 0.2])
        metric = target * rng.choice([rng.uniform(0, 3), 1 + tolerance / 2, 1 - tolerance / 2,
                                      rng.uniform(1.12, 1.4)])
        low = rng.randint(1, 3)
        high = rng.randint(low, 16)
        args = (current, metric, target, tolerance, low, high)
        got, want = impl.desired_replicas(*args), expected_desired(*args)
        assert got == want, (f"desired_replicas(current={current}, metric={metric:.4f}, "
                             f"target={target}, tolerance={tolerance}, min={low}, max={high}): "
                             f"{got}, expected {want} (current x ratio = "
                             f"{current * metric / target:.3f})")


@pytest.mark.task9_2
def test_desired_replicas_rounds_up_and_respects_the_tolerance(impl):
    assert impl.desired_replicas(3, 112, 100, 0.1, 1, 10) == 4, \
        "3 replicas at 112 % of the target: ceil(3.36) = 4 (round(3.36) = 3 leaves them overloaded)"
    assert impl.desired_replicas(4, 108, 100, 0.1, 1, 10) == 4, \
        "4 replicas at 108 % of the target, tolerance 0.1: no change (ceil(4.32) would be 5)"
    assert impl.desired_replicas(20, 92, 100, 0.1, 1, 30) == 20, \
        "20 replicas at 92 % of the target, tolerance 0.1: no change (ceil(18.4) would be 19)"
    assert impl.desired_replicas(10, 85, 100, 0.1, 1, 20) == 9, \
        "10 replicas at 85 % of the target: outside the tolerance, ceil(8.5) = 9"


@pytest.mark.task9_2
def test_desired_replicas_stays_within_its_bounds(impl, rng):
    for _ in range(50):
        low = rng.randint(1, 4)
        high = rng.randint(low + 1, 12)
        for current, metric, want, why in [
                (high, 100.0 * high / high, high, "exactly at the target"),
                (high - 1, 100.0 * high / (high - 1), high, "wants exactly maxReplicas"),
                (high, 100.0 * (high + 1) / high, high, "wants maxReplicas + 1"),
                (low + 1, 100.0 * low / (low + 1), low, "wants exactly minReplicas"),
                (low, 100.0 * (low - 0.5) / low, low, "wants fewer than minReplicas")]:
            got = impl.desired_replicas(current, metric, 100.0, 0.0, low, high)
            assert got == want, (f"desired_replicas({current}, {metric:.3f}, 100, tolerance 0, "
                                 f"min {low}, max {high}) ({why}): {got}, expected {want}")


def expected_stabilized(current, history, now, up_window, down_window):
    up = min(r for t, r in history if t > now - up_window or t == now)
    down = max(r for t, r in history if t > now - down_window or t == now)
    return min(max(current, up), down)


@pytest.mark.task9_2
def test_stabilization_on_random_histories(impl, rng):
    for _ in range(300):
        history = [(t, rng.randint(1, 10)) for t in range(0, 15 * rng.randint(1, 30), 15)]
        now, current = history[-1][0], rng.randint(1, 10)
        up, down = rng.choice([0, 15, 60, 120]), rng.choice([0, 45, 60, 300])
        got = impl.stabilized_replicas(current, list(history), now, up, down)
        want = expected_stabilized(current, history, now, up, down)
        assert got == want, (f"stabilized_replicas(current={current}, now={now}, up window {up} s, "
                             f"down window {down} s, last recommendations "
                             f"{history[-8:]}): {got}, expected {want}")


@pytest.mark.task9_2
def test_a_dip_does_not_remove_replicas_inside_the_window(impl):
    history = [(0, 6), (15, 2), (30, 2)]
    got = impl.stabilized_replicas(6, history, 30, 0, 300)
    assert got == 6, ("6 replicas were recommended 30 s ago, 2 since; with a 300 s scale-down "
                      f"window the HPA keeps 6, got {got}")
    got = impl.stabilized_replicas(6, history, 30, 0, 0)
    assert got == 2, f"with no scale-down window it follows the newest recommendation, 2: got {got}"
    got = impl.stabilized_replicas(2, [(0, 2), (15, 7)], 15, 0, 300)
    assert got == 7, f"a scale-up with no up window happens at once: 7, got {got}"
    got = impl.stabilized_replicas(2, [(0, 3), (15, 7)], 15, 60, 300)
    assert got == 3, ("with a 60 s scale-up window the HPA goes no higher than the lowest "
                      f"recommendation of the last minute (3): got {got}")


# -- 9.3 a policy -------------------------------------------------------------------------------
def hidden_case(rng):
    """A replica measured on some GPU, and a day's load on it (never the same twice)."""
    replica = Replica(capacity_rps=rng.uniform(1, 10), latency_s=rng.uniform(0.5, 5),
                      startup_s=rng.uniform(30, 120))
    base = rng.uniform(0.2, 2) * replica.capacity_rps
    peak = base + rng.uniform(2, 10) * replica.capacity_rps
    trace = load_trace(rng.randrange(2 ** 31), 3600, base, peak, bursts=rng.randint(0, 3))
    return replica, base, peak, trace


def as_policy(policy) -> HPAPolicy:
    """The policy as minillm's HPAPolicy (its checks included), whatever module made it."""
    try:
        return HPAPolicy(**dataclasses.asdict(policy))
    except TypeError:
        raise AssertionError(f"hpa_policy returned {policy!r}, not an HPAPolicy") from None


def run_both(impl, rng, cases: int = 10):
    for _ in range(cases):
        replica, base, peak, trace = hidden_case(rng)
        policy = as_policy(impl.hpa_policy(replica, peak, base))
        what = (f"{replica}, load {base:.2f} to {peak:.2f} req/s, your policy {policy}")
        yield (what, simulate(trace, replica, policy),
               simulate(trace, replica, reference.hpa_policy(replica, peak, base)))


@pytest.mark.task9_3
def test_your_policy_meets_the_slo(impl, rng):
    for what, yours, ref in run_both(impl, rng):
        got, want = yours.slo_attainment(5), ref.slo_attainment(5)
        assert got >= want - 0.01, (f"{what}: {got:.2%} of requests waited at most 5 s, the "
                                    f"reference's policy gets {want:.2%}. Peak replicas: "
                                    f"{yours.replicas.max():.0f}; the queue reached "
                                    f"{yours.waiting.max():.0f} requests")


@pytest.mark.task9_3
def test_your_policy_does_not_oscillate(impl, rng):
    for what, yours, ref in run_both(impl, rng):
        assert yours.reversals() <= ref.reversals() + 2, \
            (f"{what}: the replica count turned round {yours.reversals()} times, the "
             f"reference's {ref.reversals()}: a scale-down the next minute undoes "
             f"(look at the scale-down window)")


@pytest.mark.task9_3
def test_your_policy_does_not_waste_replicas(impl, rng):
    for what, yours, ref in run_both(impl, rng):
        assert yours.replica_seconds() <= 1.3 * ref.replica_seconds(), \
            (f"{what}: {yours.replica_seconds():.0f} replica-seconds, the reference's policy "
             f"{ref.replica_seconds():.0f} (more than 1.3 x): replicas that idle cost GPUs")


# -- integration: your HPA rules drive the simulation -------------------------------------------
@pytest.mark.integration
def test_the_simulation_with_your_rules_scales_as_the_reference(impl, rng):
    sweep = bench_sweep(rng, 6)
    pick = rng.choice(sweep)
    capacity = impl.capacity_at_slo(sweep, pick["p99_ttft_ms"], pick["p99_tpot_ms"])
    assert capacity == reference.capacity_at_slo(sweep, pick["p99_ttft_ms"], pick["p99_tpot_ms"])
    replica = Replica(capacity, latency_s=rng.uniform(0.5, 3), startup_s=rng.uniform(30, 90))
    base, peak = capacity * rng.uniform(0.3, 1.5), capacity * rng.uniform(4, 9)
    trace = load_trace(rng.randrange(2 ** 31), 3600, base, peak, bursts=2)
    policy = reference.hpa_policy(replica, peak, base)
    assert impl.replicas_needed(peak, capacity) == reference.replicas_needed(peak, capacity)
    for metric in ("concurrency", "num_requests_waiting"):
        p = HPAPolicy(metric, policy.target if metric == "concurrency" else 2.0,
                      policy.min_replicas, policy.max_replicas)
        want = simulate(trace, replica, p).replicas
        got = simulate(trace, replica, p, desired=impl.desired_replicas,
                       stabilize=impl.stabilized_replicas).replicas
        first = next((t for t in range(len(want)) if got[t] != want[t]), None)
        assert first is None, (f"{metric} policy {p}: at second {first} your rules run "
                               f"{got[first]:.0f} replicas, the reference's {want[first]:.0f}")
