"""Capacity and autoscaling: how many replicas a load needs, and when an autoscaler adds them.

Three pieces, each a small function that lab 9 asks you to write, and a simulation that runs them:

1. **Capacity at an SLO** (`capacity_at_slo`, `replicas_needed`): from `minillm bench serve`
   runs of one replica at several request rates, the highest throughput whose *p99* TTFT and
   TPOT met the SLO; the replicas a target load needs is that, rounded up.
2. **The HPA's rule** (`desired_replicas`, `stabilized_replicas`), as Kubernetes documents it
   (https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/):

       desired = ceil(current x metric / target)    (unchanged while |metric / target - 1| <= tolerance)

   clamped to [minReplicas, maxReplicas]; then the stabilization windows: a scale-down takes the
   *highest* recommendation of the last `scaleDown.stabilizationWindowSeconds` (300 s by
   default), a scale-up the *lowest* of the last `scaleUp.stabilizationWindowSeconds` (0 s).
3. **A policy** (`hpa_policy`): the metric, its target and the bounds that meet the SLO on a
   load without oscillating.

`simulate` replays a load trace (requests arriving each second) through a fleet of replicas
behind one FIFO queue, with the HPA acting every sync period (15 s, the controller's default).
A replica serves up to `capacity_rps` requests/s (measured: piece 1); a new replica serves only
after `startup_s` (pulling the image, loading the model). Each request's wait in the queue is
exact for this fluid model: the time until the departures caught up with its arrival.

The metric the HPA reads is one of what minillm's `/metrics` exports, averaged per replica over
the last sync period (as a Prometheus rate or an averaged gauge would give it):

    concurrency            requests in flight per replica, running + waiting (Little's law:
                           running = served requests/s x latency_s); KServe's scaleTarget
                           under Knative counts this
    num_requests_waiting   vllm:num_requests_waiting, requests queued per replica

What it leaves out: HPA scaling policies (pods or percent per period), readiness delays of the
metric itself, and per-replica queues (one shared queue stands for a good router).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRICS = ("concurrency", "num_requests_waiting")


# -- 1. capacity at an SLO ----------------------------------------------------------------------
def capacity_at_slo(results: list[dict], ttft_ms: float, tpot_ms: float) -> float:
    """Requests/s one replica serves within the SLO: the highest `request_throughput` among
    `minillm bench serve` results whose p99 TTFT and p99 TPOT are both within the limits
    (limits included); 0.0 when no run met them."""
    within = [r["request_throughput"] for r in results
              if r["p99_ttft_ms"] <= ttft_ms and r["p99_tpot_ms"] <= tpot_ms]
    return max(within, default=0.0)


def replicas_needed(target_rps: float, goodput_per_replica: float) -> int:
    """Replicas that carry `target_rps` when each carries `goodput_per_replica` (at least one)."""
    if goodput_per_replica <= 0:
        raise ValueError("one replica met the SLO for no request: it cannot carry any load at "
                         "this SLO (a bigger GPU, a smaller model, or a looser SLO)")
    return max(1, math.ceil(target_rps / goodput_per_replica))


# -- 2. the HPA's rule --------------------------------------------------------------------------
def desired_replicas(current: int, metric: float, target: float, tolerance: float,
                     min_replicas: int, max_replicas: int) -> int:
    """The HPA's recommendation: `ceil(current * metric / target)`, or `current` while the
    ratio metric / target is within `tolerance` of 1, clamped to [min_replicas, max_replicas].
    `metric` is the average per replica."""
    ratio = metric / target
    desired = current if abs(ratio - 1) <= tolerance else math.ceil(current * ratio)
    return min(max(desired, min_replicas), max_replicas)


def stabilized_replicas(current: int, history: list[tuple[float, int]], now: float,
                        up_window_s: float, down_window_s: float) -> int:
    """Replicas after the stabilization windows. `history` holds (time, recommendation) pairs,
    the newest last (taken at `now`). A scale-up goes no higher than the lowest recommendation
    of the last `up_window_s` seconds; a scale-down no lower than the highest of the last
    `down_window_s` seconds (Kubernetes' stabilizeRecommendationWithBehaviors)."""
    newest = history[-1][1]
    up = min([newest] + [r for t, r in history if t > now - up_window_s])
    down = max([newest] + [r for t, r in history if t > now - down_window_s])
    return min(max(current, up), down)


# -- 3. a policy --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Replica:
    """One replica, from measurements: what it serves within the SLO and how long it takes."""
    capacity_rps: float  # requests/s within the SLO (capacity_at_slo)
    latency_s: float  # a request's time in the replica at that load (mean end-to-end latency)
    startup_s: float = 60.0  # from a scale-up to serving: image, model load, warm-up


@dataclass(frozen=True)
class HPAPolicy:
    """What an HPA (or KEDA's ScaledObject) is told: the metric, its target per replica, the
    bounds, the tolerance and the stabilization windows (Kubernetes' defaults)."""
    metric: str
    target: float
    min_replicas: int = 1
    max_replicas: int = 10
    tolerance: float = 0.1
    up_window_s: float = 0.0
    down_window_s: float = 300.0
    sync_period_s: float = 15.0

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r}: choose one of {', '.join(METRICS)}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 1 <= min_replicas <= max_replicas, got "
                             f"{self.min_replicas} and {self.max_replicas}")
        if self.target <= 0:
            raise ValueError(f"target must be positive, got {self.target}")


def hpa_policy(replica: Replica, peak_rps: float, base_rps: float) -> HPAPolicy:
    """A policy that meets the SLO on loads between `base_rps` and `peak_rps` without
    oscillating: concurrency with a target of 60 % of what one replica sustains (headroom for
    the load that arrives while a new replica starts), one replica more than the base load needs
    at that target (a burst arrives faster than a replica starts; and one replica is never
    highly available), enough for the peak at full capacity plus one, and the default 300 s
    window before a scale-down."""
    headroom = 0.6
    return HPAPolicy("concurrency", target=headroom * replica.capacity_rps * replica.latency_s,
                     min_replicas=replicas_needed(base_rps, headroom * replica.capacity_rps) + 1,
                     max_replicas=replicas_needed(peak_rps, replica.capacity_rps) + 1)


# -- the simulation -----------------------------------------------------------------------------
@dataclass
class Simulation:
    """Per second of the trace: arrivals, replicas asked for and serving, the queue, and the
    wait of the requests that arrived in that second."""
    arrivals: np.ndarray
    replicas: np.ndarray
    ready: np.ndarray
    waiting: np.ndarray
    wait_s: np.ndarray

    def slo_attainment(self, max_wait_s: float) -> float:
        """Share of requests that waited at most `max_wait_s` in the queue."""
        return float(self.arrivals[self.wait_s <= max_wait_s].sum() / self.arrivals.sum())

    def replica_seconds(self) -> float:
        """What the run cost: replicas (starting ones included) x seconds."""
        return float(self.replicas.sum())

    def reversals(self) -> int:
        """How often the replica count turned round (up then down, or down then up)."""
        steps = np.sign(np.diff(self.replicas))
        steps = steps[steps != 0]
        return int((np.diff(steps) != 0).sum())


def simulate(trace, replica: Replica, policy: HPAPolicy, initial_replicas: int | None = None,
             desired=desired_replicas, stabilize=stabilized_replicas) -> Simulation:
    """Replay `trace` (requests arriving in each second) through replicas that `policy` scales.
    `desired` and `stabilize` are the HPA's two rules (lab 9 plugs its own in here)."""
    arrivals = np.asarray(trace, dtype=float)
    n = len(arrivals)
    ready_at = [0.0] * (initial_replicas or policy.min_replicas)  # when each replica serves
    history: list[tuple[float, int]] = []
    queue = 0.0
    replicas, ready, waiting, departures, metric = (np.zeros(n) for _ in range(5))
    sync = max(1, round(policy.sync_period_s))
    for t in range(n):
        serving = sum(r <= t for r in ready_at)
        queue += arrivals[t]
        served = min(queue, serving * replica.capacity_rps)
        queue -= served
        replicas[t], ready[t], waiting[t], departures[t] = len(ready_at), serving, queue, served
        in_flight = served * replica.latency_s + queue
        metric[t] = (in_flight if policy.metric == "concurrency" else queue) / len(ready_at)
        if (t + 1) % sync == 0:
            current = len(ready_at)
            history.append((t, desired(current, float(metric[t + 1 - sync:t + 1].mean()),
                                       policy.target, policy.tolerance, policy.min_replicas,
                                       policy.max_replicas)))
            new = stabilize(current, history, t, policy.up_window_s, policy.down_window_s)
            if new > current:
                ready_at += [t + 1 + replica.startup_s] * (new - current)
            elif new < current:  # the newest (still starting) go first
                ready_at = sorted(ready_at)[:new]
    return Simulation(arrivals, replicas, ready, waiting, _fifo_waits(arrivals, departures))


def _fifo_waits(arrivals: np.ndarray, departures: np.ndarray) -> np.ndarray:
    """Seconds until the requests of each second were served, first come first served: the
    first second by which cumulative departures reach that second's cumulative arrivals
    (inf for requests still queued at the end)."""
    arrived, departed = np.cumsum(arrivals), np.cumsum(departures)
    done = np.searchsorted(departed, arrived - 1e-9)
    return np.where(done < len(arrivals), done - np.arange(len(arrivals)), np.inf)


def load_trace(seed: int, duration_s: int = 3600, base_rps: float = 2.0,
               peak_rps: float = 20.0, bursts: int = 2) -> np.ndarray:
    """Requests arriving in each second: a slow rise from `base_rps` to `peak_rps` and back
    (a day compressed), `bursts` short spikes, and Poisson noise. Seeded: the same trace each
    time for one seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(duration_s) / duration_s
    center, width = rng.uniform(0.3, 0.6), rng.uniform(0.08, 0.15)
    rate = base_rps + (peak_rps - base_rps) * np.exp(-0.5 * ((t - center) / width) ** 2)
    for _ in range(bursts):
        start, length = rng.uniform(0.05, 0.9), rng.uniform(0.01, 0.04)
        rate += np.where((t >= start) & (t < start + length), 0.2 * (peak_rps - base_rps), 0.0)
    return rng.poisson(np.minimum(rate, peak_rps)).astype(float)
