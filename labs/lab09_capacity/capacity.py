"""Lab 9: capacity and autoscaling. Fill in the stubs, then run `make grade LAB=lab09`.

The reference is `minillm/bench/autoscale.py`; chapter 10 runs it. Three questions an operator
answers before writing `minReplicas`, `maxReplicas` and a scaling target into an
InferenceService:

1. How much does one replica carry within the SLO, and how many replicas does a load need? (9.1)
2. What does the Horizontal Pod Autoscaler do with a metric? (9.2, Kubernetes' own rule:
   https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/)
3. Which policy meets the SLO on a day's load without adding and removing replicas all the
   time? (9.3)

`Replica` and `HPAPolicy` (the dataclasses) and `simulate` are given: `simulate(trace, replica,
policy, desired=..., stabilize=...)` replays a load through replicas that your rules scale.
"""
from __future__ import annotations

# Given: what a replica is, what a policy holds, and the simulation that runs them.
from minillm.bench.autoscale import HPAPolicy, Replica, simulate  # noqa: F401


# -- 9.1 capacity at an SLO ---------------------------------------------------------------------
def capacity_at_slo(results: list[dict], ttft_ms: float, tpot_ms: float) -> float:
    """Requests/s one replica serves within the SLO.

    `results` are `minillm bench serve --save-result` JSONs of one replica, one per request
    rate; each has `request_throughput` (requests/s served), `p99_ttft_ms`, `p99_tpot_ms` and the
    means `mean_ttft_ms`, `mean_tpot_ms`. Return the highest `request_throughput` among the runs
    whose p99 TTFT <= `ttft_ms` and p99 TPOT <= `tpot_ms` (a run exactly at a limit meets it),
    or 0.0 when no run met both.

    Hint: an SLO is a promise about (almost) every request, so it is judged on the p99, not on
    the mean: a run whose mean is fine may still leave one request in twenty far too slow.
    """
    raise NotImplementedError("Task 9.1: the best throughput whose p99 met the SLO")


def replicas_needed(target_rps: float, goodput_per_replica: float) -> int:
    """Replicas that carry `target_rps` when each carries `goodput_per_replica` requests/s.

    At least one replica. A replica that carries nothing (`goodput_per_replica <= 0`) is a
    `ValueError` whose message says "met the SLO for no request".

    Hint: 2.2 replicas' worth of load needs 3 replicas, not 2.
    """
    raise NotImplementedError("Task 9.1: replicas for a target load")


# -- 9.2 the HPA's rule -------------------------------------------------------------------------
def desired_replicas(current: int, metric: float, target: float, tolerance: float,
                     min_replicas: int, max_replicas: int) -> int:
    """The HPA's recommendation for `current` replicas whose average metric is `metric`.

        ratio   = metric / target
        desired = current                     if |ratio - 1| <= tolerance
                  ceil(current x ratio)       otherwise

    then clamped to [min_replicas, max_replicas] (both bounds allowed).

    Hint: the tolerance (0.1 by default) keeps the HPA from acting on noise; the ceiling makes
    sure it never under-provisions.
    """
    raise NotImplementedError("Task 9.2: ceil(current x metric / target), tolerance, bounds")


def stabilized_replicas(current: int, history: list[tuple[float, int]], now: float,
                        up_window_s: float, down_window_s: float) -> int:
    """Replicas after the stabilization windows.

    `history` holds the (time in s, recommendation) pairs of every sync so far, oldest first;
    the last one is the newest, taken at `now`. A recommendation is in a window of `w` seconds
    when its time is strictly after `now - w` (the newest is always in both windows).

        up   = the lowest recommendation in the up window
        down = the highest recommendation in the down window
        result = current, raised to `up` if below it, then lowered to `down` if above it

    So a scale-down goes no lower than the highest recommendation of the last
    `down_window_s` seconds (300 s by default: a dip in the load does not remove a replica
    that the next minute needs again), and a scale-up no higher than the lowest of the last
    `up_window_s` (0 s by default: scale up at once).
    """
    raise NotImplementedError("Task 9.2: the stabilization windows")


# -- 9.3 a policy -------------------------------------------------------------------------------
def hpa_policy(replica: Replica, peak_rps: float, base_rps: float) -> HPAPolicy:
    """A policy for a load that moves between `base_rps` and `peak_rps`, with bursts.

    Return an `HPAPolicy(metric, target, min_replicas, max_replicas, ...)` (see its fields; the
    tolerance, windows and sync period default to Kubernetes'). On the graders' load traces,
    which you never see, `simulate(trace, replica, your_policy)` must:

    - meet the SLO: as large a share of requests as the reference's policy gets waiting at most
      5 s in the queue (a point less is allowed);
    - not oscillate: turn round (up then down, or down then up) at most two more times than
      the reference;
    - not waste: cost at most 1.3 x the reference's replica-seconds.

    Hint: `replica.capacity_rps` is what one replica serves within the SLO and
    `replica.latency_s` how long each request stays in it, so one replica at capacity holds
    `capacity_rps x latency_s` requests in flight (Little's law). A new replica serves only
    `replica.startup_s` seconds after the HPA asks for it: what arrives meanwhile needs room.
    """
    raise NotImplementedError("Task 9.3: a policy that meets the SLO without oscillating")
