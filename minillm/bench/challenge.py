"""Chapter 1's measurements: many users served by the naive generator, and what it costs.

The metrics a serving system is judged by, defined once here (the same definitions as vLLM's
`bench serve` and `minillm bench serve`) and computed from request records:

- **throughput**: output tokens per second of wall-clock time, over all requests together;
- **TTFT** (time to first token): from a request's arrival to its first output token, queueing
  included — what a user waits before text starts to appear;
- **TPOT** (time per output token): the mean gap between a request's later tokens,
  `(end - first token) / (output tokens - 1)` — how fast text streams once it started;
- **end-to-end latency**: from arrival to the last token;
- **percentiles**: a service is judged by its slow requests, so each timing is reported at the
  median (p50) and at p99, not as a mean;
- **goodput**: requests per second that met every latency limit (an SLO such as TTFT <= 500 ms
  and TPOT <= 50 ms); throughput that users do not wait too long for;
- **KV memory utilisation**: real tokens / KV slots held, averaged over the steps, as chapter 3
  measures it;
- **cost per million tokens**: what the hardware costs per million output tokens at that
  throughput.

Lab 0 (`labs/lab00_metrics`) asks you to write `time_to_first_token`, `time_per_output_token`,
`percentile`, `goodput` and `kv_utilisation`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass
class RequestRecord:
    """One served request: its sizes and its timeline (seconds, on one clock)."""

    prompt_tokens: int
    output_tokens: int
    reserved_tokens: int  # KV slots reserved for it (the naive cache: prompt + max_new_tokens)
    arrival_s: float
    first_token_s: float
    end_s: float

    @property
    def latency_s(self) -> float:
        return self.end_s - self.arrival_s


def time_to_first_token(record: RequestRecord) -> float:
    """Seconds from the request's arrival to its first output token (queueing included)."""
    return record.first_token_s - record.arrival_s


def time_per_output_token(record: RequestRecord) -> float | None:
    """Mean seconds between the request's output tokens after the first; None with one token."""
    if record.output_tokens < 2:
        return None
    return (record.end_s - record.first_token_s) / (record.output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0 <= q <= 100) of `values`, interpolating linearly between the two
    nearest ranks (numpy's default): rank `q / 100 * (n - 1)` of the sorted values."""
    if not values:
        raise ValueError("the percentile of no values is undefined")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], not {q}")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def goodput(records: list[RequestRecord], ttft_limit_s: float, tpot_limit_s: float) -> float:
    """Requests per second (first arrival to last end) that met both limits, limits included.

    A request with a single output token has no TPOT and is judged on its TTFT alone.
    """
    good = [r for r in records if time_to_first_token(r) <= ttft_limit_s
            and (time_per_output_token(r) is None or time_per_output_token(r) <= tpot_limit_s)]
    duration = max(r.end_s for r in records) - min(r.arrival_s for r in records)
    return len(good) / duration


def kv_utilisation(records: list[RequestRecord]) -> float:
    """Real tokens / reserved KV slots, averaged over every step of every request (chapter 3's
    measure). A request runs one step per output token; at its i-th step (i = 0 is the prefill)
    its cache holds `prompt + i` tokens (the token sampled last is never cached) out of the
    `reserved_tokens` slots it holds throughout."""
    stored = sum(r.output_tokens * r.prompt_tokens + r.output_tokens * (r.output_tokens - 1) // 2
                 for r in records)
    held = sum(r.output_tokens * r.reserved_tokens for r in records)
    return stored / held


def serve_one_at_a_time(generator, prompts: list[str], max_new_tokens: int,
                        clock: Callable[[], float] = time.perf_counter) -> list[RequestRecord]:
    """All `prompts` arrive at once; the naive generator serves them one after another.

    `generator.generate(prompt, max_new_tokens)` returns an output with `token_ids`, `ttft_s`
    and `latency_s` (`minillm.naive.NaiveGenerator`); `generator.tokenizer` counts prompt tokens.
    """
    arrival = clock()
    records = []
    for prompt in prompts:
        start = clock()
        out = generator.generate(prompt, max_new_tokens=max_new_tokens)
        prompt_tokens = len(generator.tokenizer.encode(prompt))
        records.append(RequestRecord(prompt_tokens, len(out.token_ids),
                                     prompt_tokens + max_new_tokens, arrival,
                                     start + out.ttft_s, start + out.latency_s))
    return records


def serving_metrics(records: list[RequestRecord]) -> dict[str, float]:
    """The chapter's metrics over a set of served requests: totals, p50 and p99 timings."""
    start = min(r.arrival_s for r in records)
    end = max(r.end_s for r in records)
    timings = {"ttft": [time_to_first_token(r) for r in records],
               "tpot": [x for r in records if (x := time_per_output_token(r)) is not None],
               "latency": [r.latency_s for r in records]}
    metrics = {
        "requests": len(records),
        "output_tokens": sum(r.output_tokens for r in records),
        "wall_s": end - start,
        "throughput_tok_s": sum(r.output_tokens for r in records) / (end - start),
        "kv_utilisation": kv_utilisation(records),
    }
    for name, xs in timings.items():
        metrics |= {f"{name}_{q}_s": percentile(xs, int(q[1:])) if xs else float("nan")
                    for q in ("p50", "p99")}
    return metrics


def cost_per_million_tokens(price_per_hour: float, tokens_per_second: float) -> float:
    """Dollars per million output tokens for hardware rented at `price_per_hour`."""
    if tokens_per_second <= 0:
        return float("inf")
    return price_per_hour / (tokens_per_second * 3600) * 1e6
