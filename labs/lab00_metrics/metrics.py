"""Lab 0: measure a server from the records of the requests it served. Fill in each function,
then run `make grade LAB=lab00`.

The reference lives in `minillm/bench/challenge.py` (look only after you tried!).
"""
from __future__ import annotations

from typing import Sequence

from minillm.bench.challenge import RequestRecord


def time_to_first_token(record: RequestRecord) -> float:
    """Seconds from the request's arrival to its first output token (queueing included).

    This is what a user waits before text starts to appear.
    """
    raise NotImplementedError("Task 0.1: time to first token")


def time_per_output_token(record: RequestRecord) -> float | None:
    """Mean seconds between the request's output tokens after the first; None with one token.

    `output_tokens` tokens arrive between `first_token_s` and `end_s`: the first at
    `first_token_s`, so there are `output_tokens - 1` gaps after it.
    """
    raise NotImplementedError("Task 0.1: time per output token")


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0 <= q <= 100) of `values`, interpolating linearly between the two
    nearest ranks (numpy's default): rank `q / 100 * (n - 1)` of the sorted values.

    Example: percentile([10, 20], 99) is 10 + 0.99 * (20 - 10) = 19.9.
    Raises ValueError for no values or for q outside [0, 100].
    Hint: do not assume `values` is sorted, and do not sort the caller's list in place.
    """
    raise NotImplementedError("Task 0.2: a percentile")


def goodput(records: list[RequestRecord], ttft_limit_s: float, tpot_limit_s: float) -> float:
    """Requests per second that met both latency limits, limits included.

    A request is good when its TTFT <= `ttft_limit_s` and its TPOT <= `tpot_limit_s`; a request
    with a single output token has no TPOT and is judged on its TTFT alone. Divide the number of
    good requests by the time from the first arrival to the last end.
    """
    raise NotImplementedError("Task 0.3: goodput")


def kv_utilisation(records: list[RequestRecord]) -> float:
    """Real tokens / reserved KV slots, averaged over every step of every request.

    A request runs one step per output token. At its i-th step (i = 0 is the prefill) its cache
    holds `prompt_tokens + i` tokens (the token sampled last is never cached), out of the
    `reserved_tokens` slots it holds throughout. Sum the tokens held over all steps of all
    requests and divide by the slots held over the same steps.
    """
    raise NotImplementedError("Task 0.4: KV memory utilisation")
