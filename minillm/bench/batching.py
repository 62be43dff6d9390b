"""Chapter 5's measurements on the real engine: who runs at each step, static against continuous
batching, and what one forward pass costs as the batch grows.

`replay` drives an `LLMEngine` through its public surface only (`add_request`, `step`,
`has_unfinished_requests`): requests arrive on a clock, each step's outputs say which requests
produced a token. Two clocks:

- `"steps"`: each engine step takes one unit of time. Deterministic: the same trace gives the
  same schedule on any machine (the Gantt charts, and what the chapter checks).
- `"measured"`: each step takes the wall time it took here. Idle time (nothing running, the next
  request not yet arrived) is skipped rather than slept, so a trace of a minute of traffic
  replays in the seconds the engine needs for it.

Static batching is the policy before Orca (OSDI 2022): a batch runs until its last request
finishes; only then may the next batch start. Continuous batching lets a request join at the
next step.
"""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field

from minillm.bench.challenge import RequestRecord, percentile, time_per_output_token, \
    time_to_first_token
from minillm.sampling_params import RequestOutputKind, SamplingParams


@dataclass
class TraceRequest:
    request_id: str
    arrival: float  # on the replay's clock: seconds, or steps
    prompt_token_ids: list[int]
    max_tokens: int


@dataclass
class RequestTimeline:
    arrival: float
    prompt_tokens: int
    token_times: list[float] = field(default_factory=list)  # clock when each token came out
    token_steps: list[int] = field(default_factory=list)  # the step that produced it

    def record(self) -> RequestRecord:
        n = len(self.token_times)
        return RequestRecord(self.prompt_tokens, n, self.prompt_tokens + n, self.arrival,
                             self.token_times[0], self.token_times[-1])

    @property
    def inter_token_latencies(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]


@dataclass
class Replay:
    """What a replay saw: per request its timeline; per step the requests that got a token."""

    requests: dict[str, RequestTimeline]
    step_outputs: list[list[str]]  # step i -> ids of the requests that produced a token in it
    step_tokens: list[int]  # step i -> tokens the forward pass computed (prefill + decode)
    duration: float  # first arrival to last token, on the replay's clock

    def summary(self) -> dict[str, float]:
        """Throughput and p50/p99 of TTFT, TPOT and inter-token latency, on the replay's clock."""
        records = [t.record() for t in self.requests.values()]
        timings = {
            "ttft": [time_to_first_token(r) for r in records],
            "tpot": [x for r in records if (x := time_per_output_token(r)) is not None],
            "itl": [x for t in self.requests.values() for x in t.inter_token_latencies],
        }
        out = {"requests": len(records), "steps": len(self.step_outputs),
               "output_tokens": sum(r.output_tokens for r in records),
               "throughput": sum(r.output_tokens for r in records) / self.duration}
        for name, values in timings.items():
            for q in (50, 99):
                out[f"{name}_p{q}"] = percentile(values, q) if values else float("nan")
        return out


def replay(engine, trace: list[TraceRequest], clock: str = "measured",
           static_batch: int | None = None) -> Replay:
    """Serve `trace` on `engine` (an `LLMEngine` with nothing in flight) and time it.

    `static_batch=None` is continuous batching: each request is added as soon as it has arrived,
    and the engine's scheduler takes it in at the next step it has room. `static_batch=B` is
    static batching: up to B arrived requests are added together, and the next ones only once
    all of them have finished. Greedy sampling, `max_tokens` tokens each (EOS ignored), so
    every policy computes exactly the same tokens.
    """
    if clock not in ("steps", "measured"):
        raise ValueError(f"clock must be 'steps' or 'measured', not {clock!r}")
    if engine.has_unfinished_requests():
        raise ValueError("the engine must be idle: its requests would mix with the trace's")
    pending = sorted(trace, key=lambda r: r.arrival)
    timelines = {r.request_id: RequestTimeline(r.arrival, len(r.prompt_token_ids))
                 for r in trace}
    step_outputs, step_tokens = [], []
    now = pending[0].arrival if pending else 0.0
    while pending or engine.has_unfinished_requests():
        admit = [r for r in pending if r.arrival <= now]
        if static_batch is not None:
            admit = [] if engine.has_unfinished_requests() else admit[:static_batch]
        for request in admit:
            pending.remove(request)
            params = SamplingParams(temperature=0, max_tokens=request.max_tokens,
                                    ignore_eos=True, output_kind=RequestOutputKind.CUMULATIVE)
            engine.add_request(request.request_id, {"prompt_token_ids": request.prompt_token_ids},
                               params)
        if not engine.has_unfinished_requests():
            now = max(now, pending[0].arrival)  # idle until the next arrival
            continue
        started = time.perf_counter()
        outputs = engine.step()
        now += 1 if clock == "steps" else time.perf_counter() - started
        progressed = []
        for output in outputs:
            timeline = timelines[output.request_id]
            for _ in range(len(output.outputs[0].token_ids) - len(timeline.token_times)):
                timeline.token_times.append(now)
                timeline.token_steps.append(len(step_outputs))
            progressed.append(output.request_id)
        step_outputs.append(progressed)
        step_tokens.append(engine.stats.last_step_tokens)
    start = min((r.arrival for r in trace), default=0.0)
    return Replay(timelines, step_outputs, step_tokens, now - start)


def synthetic_trace(num_requests: int, arrival_rate: float, seed: int, vocab_size: int,
                    prompt_tokens: tuple[int, int] = (8, 64),
                    output_tokens: tuple[int, int] = (4, 64)) -> list[TraceRequest]:
    """Poisson arrivals (`arrival_rate` requests per unit of the clock; `inf`: all at 0), prompt
    and output lengths uniform in the given inclusive ranges, random token ids."""
    rng = random.Random(seed)
    now, trace = 0.0, []
    for i in range(num_requests):
        if i and arrival_rate != float("inf"):
            now += rng.expovariate(arrival_rate)
        prompt = [rng.randrange(1, vocab_size) for _ in range(rng.randint(*prompt_tokens))]
        trace.append(TraceRequest(f"r{i}", now, prompt, rng.randint(*output_tokens)))
    return trace


def gantt_rows(result: Replay, names: dict[str, str] | None = None) -> list[tuple[str, float,
                                                                                     list[int]]]:
    """(name, arrival, steps in which it produced a token) per request, in arrival order: what
    a Gantt chart of the schedule draws. `names` renames request ids (e.g. to "A", "B")."""
    names = names or {}
    return [(names.get(rid, rid), t.arrival, list(t.token_steps))
            for rid, t in sorted(result.requests.items(), key=lambda kv: kv[1].arrival)]


def decode_step_seconds(engine, batch_sizes: list[int], context_tokens: int = 64,
                        repeats: int = 5) -> dict[int, float]:
    """Median wall time of one decode step (every sequence brings one token) for each batch size,
    measured through `engine.step()`: a forward pass plus the engine's own work around it.

    For each size, that many requests of `context_tokens` prompt tokens are prefilled, then
    `repeats` decode steps are timed; the requests are aborted afterwards.
    """
    times = {}
    for batch in batch_sizes:
        if engine.has_unfinished_requests():
            raise ValueError("the engine must be idle")
        params = SamplingParams(temperature=0, max_tokens=repeats + 2, ignore_eos=True,
                                output_kind=RequestOutputKind.CUMULATIVE)
        ids = [f"decode-{batch}-{i}" for i in range(batch)]
        for i, request_id in enumerate(ids):
            prompt = [(7 * i + t) % 97 + 1 for t in range(context_tokens)]
            engine.add_request(request_id, {"prompt_token_ids": prompt}, params)
        prefilled, samples = set(), []
        while len(samples) < repeats:
            outputs = engine.step()
            if len(prefilled) == batch:  # every prompt was done before this step: a pure decode
                samples.append(engine.stats.last_step_seconds)
            prefilled |= {o.request_id for o in outputs}
        for request_id in ids:
            engine.abort_request(request_id)
        times[batch] = statistics.median(samples)
    return times



def plot_gantt(ax, result: Replay, title: str, names: dict[str, str] | None = None) -> None:
    """Draw a replay's schedule: one row per request, a cell per step in which it produced a
    token, a tick where it arrived (on the step clock: the step it could first have run)."""
    rows = gantt_rows(result, names)
    for y, (name, arrival, steps) in enumerate(rows):
        ax.broken_barh([(s, 0.9) for s in steps], (y - 0.4, 0.8), color=f"C{y % 10}")
        ax.plot([arrival, arrival], [y - 0.45, y + 0.45], color="black", lw=2)
    ax.set_yticks(range(len(rows)), [name for name, _, _ in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("engine step")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
