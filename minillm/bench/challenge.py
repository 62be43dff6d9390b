"""Chapter 1's measurements: many users served by the naive generator, and what it costs.

The metrics a serving system is judged by, defined once here and computed on real runs:

- **throughput**: output tokens per second of wall-clock time, over all requests together;
- **TTFT** (time to first token): from a request's arrival to its first output token, queueing
  included — what a user waits before text starts to appear;
- **per-request speed**: a request's output tokens per second once it started producing them
  (its decode speed: what a user sees while text streams);
- **end-to-end latency**: from arrival to the last token;
- **KV memory utilisation**: tokens actually stored / token slots reserved for KV;
- **cost per million tokens**: what the hardware costs per million output tokens at that
  throughput.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


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
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def latency_s(self) -> float:
        return self.end_s - self.arrival_s

    @property
    def tokens_per_s(self) -> float:
        """Decode speed after the first token (the rate text streams to the user)."""
        decode_time = self.end_s - self.first_token_s
        return (self.output_tokens - 1) / decode_time if decode_time > 0 else float("nan")


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
    """The chapter's metrics over a set of served requests."""
    start = min(r.arrival_s for r in records)
    end = max(r.end_s for r in records)
    ttft = np.array([r.ttft_s for r in records])
    used = sum(r.prompt_tokens + r.output_tokens for r in records)
    return {
        "requests": len(records),
        "output_tokens": sum(r.output_tokens for r in records),
        "wall_s": end - start,
        "throughput_tok_s": sum(r.output_tokens for r in records) / (end - start),
        "ttft_mean_s": float(ttft.mean()),
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_max_s": float(ttft.max()),
        "tokens_per_s_per_request": float(np.nanmean([r.tokens_per_s for r in records])),
        "latency_mean_s": float(np.mean([r.latency_s for r in records])),
        "kv_utilisation": used / sum(r.reserved_tokens for r in records),
    }


def cost_per_million_tokens(price_per_hour: float, tokens_per_second: float) -> float:
    """Dollars per million output tokens for hardware rented at `price_per_hour`."""
    if tokens_per_second <= 0:
        return float("inf")
    return price_per_hour / (tokens_per_second * 3600) * 1e6
