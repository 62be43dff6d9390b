"""Lab 0 tests. `make grade LAB=lab00` grades all tasks, `make grade LAB=lab00 TASK=0.2` one.

Expected values come from numpy (percentiles) or are worked out by hand in the test; random
records are drawn fresh each run (`rng`), and hypothesis searches for values your code gets wrong.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.bench.challenge import RequestRecord

STARTER = "metrics.py"
REFERENCE = "minillm.bench.challenge"


def record(arrival, first, end, output_tokens, prompt_tokens=4, reserved_tokens=20):
    return RequestRecord(prompt_tokens, output_tokens, reserved_tokens, arrival, first, end)


def random_records(rng, n):
    """Requests with random sizes and timelines (times are multiples of 1/64: exact floats)."""
    out = []
    for _ in range(n):
        arrival = rng.randint(0, 640) / 64
        first = arrival + rng.randint(0, 320) / 64
        tokens = rng.randint(1, 40)
        prompt = rng.randint(1, 50)
        out.append(RequestRecord(prompt, tokens, prompt + tokens + rng.randint(0, 30), arrival,
                                 first, first + (tokens - 1) * rng.randint(1, 64) / 64))
    return out


# -- 0.1 TTFT and TPOT --------------------------------------------------------------------------
@pytest.mark.task0_1
def test_ttft_counts_the_queue(impl):
    r = record(arrival=2.0, first=3.5, end=5.0, output_tokens=4)
    got = impl.time_to_first_token(r)
    assert got == 1.5, f"time_to_first_token({r}) returned {got}, expected 3.5 - 2.0 = 1.5"


@pytest.mark.task0_1
def test_tpot_divides_by_the_gaps(impl):
    r = record(arrival=0.0, first=1.0, end=4.0, output_tokens=4)  # tokens at 1, 2, 3, 4
    got = impl.time_per_output_token(r)
    assert got == 1.0, f"time_per_output_token({r}) returned {got}, expected (4 - 1) / 3 = 1.0"
    one = record(arrival=0.0, first=1.0, end=1.0, output_tokens=1)
    got = impl.time_per_output_token(one)
    assert got is None, f"time_per_output_token({one}) returned {got}, expected None (no gaps)"


@pytest.mark.task0_1
def test_ttft_and_tpot_random(impl, rng):
    for r in random_records(rng, 200):
        want_ttft = r.first_token_s - r.arrival_s
        want_tpot = (r.end_s - r.first_token_s) / (r.output_tokens - 1) \
            if r.output_tokens > 1 else None
        got = impl.time_to_first_token(r), impl.time_per_output_token(r)
        assert got[0] == pytest.approx(want_ttft), \
            f"time_to_first_token({r}) returned {got[0]}, expected {want_ttft}"
        assert (got[1] is None and want_tpot is None) or got[1] == pytest.approx(want_tpot), \
            f"time_per_output_token({r}) returned {got[1]}, expected {want_tpot}"


# -- 0.2 percentiles ----------------------------------------------------------------------------
@pytest.mark.task0_2
@pytest.mark.parametrize("values,q,want", [([3, 1, 2], 50, 2), ([1, 2, 3, 4], 50, 2.5),
                                           ([10, 20], 99, 19.9), ([5], 99, 5), ([4, 8], 0, 4),
                                           ([4, 8], 100, 8), ([1, 2, 3, 4, 5], 25, 2)])
def test_percentile_examples(impl, values, q, want):
    got = impl.percentile(list(values), q)
    assert got == pytest.approx(want), f"percentile({values}, {q}) returned {got}, expected {want}"


@pytest.mark.task0_2
def test_percentile_rejects_what_has_none(impl):
    with pytest.raises(ValueError):
        impl.percentile([], 50)
    for q in (-1, 100.5):
        with pytest.raises(ValueError):
            impl.percentile([1.0, 2.0], q)


@pytest.mark.task0_2
@given(values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=40),
       q=st.floats(0, 100))
def test_percentile_matches_numpy(impl, values, q):
    before = list(values)
    got = impl.percentile(values, q)
    want = float(np.percentile(values, q))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-6), \
        f"percentile({before}, {q}) returned {got}, expected numpy's {want}"
    assert values == before, f"percentile changed its input: {before} became {values}"


# -- 0.3 goodput --------------------------------------------------------------------------------
@pytest.mark.task0_3
def test_goodput_limits_are_included(impl):
    records = [record(0.0, 0.5, 1.0, 3),    # TTFT 0.5 = limit, TPOT 0.25 = limit: good
               record(0.0, 1.5, 2.0, 5),    # TTFT 1.5: too slow
               record(1.0, 1.25, 1.25, 1),  # one token: TTFT alone decides, good
               record(0.0, 0.25, 4.0, 2)]   # TPOT 3.75: too slow; the run lasts 0 .. 4 s
    got = impl.goodput(records, ttft_limit_s=0.5, tpot_limit_s=0.25)
    assert got == pytest.approx(0.5), \
        f"goodput({records}, ttft_limit_s=0.5, tpot_limit_s=0.25) returned {got}, expected " \
        "2 good requests / 4 s = 0.5"


@pytest.mark.task0_3
def test_goodput_random(impl, rng):
    for _ in range(50):
        records = random_records(rng, rng.randint(1, 30))
        ttft_limit, tpot_limit = rng.randint(0, 320) / 64, rng.randint(1, 64) / 64
        good = 0
        for r in records:
            tpot = (r.end_s - r.first_token_s) / (r.output_tokens - 1) \
                if r.output_tokens > 1 else None
            good += r.first_token_s - r.arrival_s <= ttft_limit and \
                (tpot is None or tpot <= tpot_limit)
        span = max(r.end_s for r in records) - min(r.arrival_s for r in records)
        if span == 0:
            continue
        got = impl.goodput(records, ttft_limit, tpot_limit)
        assert got == pytest.approx(good / span), \
            f"goodput({records}, {ttft_limit}, {tpot_limit}) returned {got}, expected " \
            f"{good} good / {span} s = {good / span}"


# -- 0.4 KV utilisation -------------------------------------------------------------------------
@pytest.mark.task0_4
def test_kv_utilisation_by_hand(impl):
    # prompt 2, 3 output tokens, 10 slots reserved: the cache holds 2, 3, 4 tokens over 3 steps
    r = record(0.0, 1.0, 2.0, output_tokens=3, prompt_tokens=2, reserved_tokens=10)
    got = impl.kv_utilisation([r])
    assert got == pytest.approx(9 / 30), f"kv_utilisation([{r}]) returned {got}, expected 9/30"
    # a second request weighs by its steps: 1 step holding 5 of 5 slots
    s = record(0.0, 1.0, 1.0, output_tokens=1, prompt_tokens=5, reserved_tokens=5)
    got = impl.kv_utilisation([r, s])
    assert got == pytest.approx(14 / 35), \
        f"kv_utilisation([{r}, {s}]) returned {got}, expected (9 + 5) / (30 + 5)"


@pytest.mark.task0_4
def test_kv_utilisation_random(impl, rng):
    for _ in range(50):
        records = random_records(rng, rng.randint(1, 20))
        held = stored = 0
        for r in records:  # step by step, the slow, obviously right way
            for i in range(r.output_tokens):
                stored += r.prompt_tokens + i
                held += r.reserved_tokens
        got = impl.kv_utilisation(records)
        assert got == pytest.approx(stored / held), \
            f"kv_utilisation({records}) returned {got}, expected {stored}/{held}"
        assert 0 < got <= 1 or math.isclose(got, 1)
