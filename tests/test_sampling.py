"""The sampler and SamplingParams, each checked against an independent, plain-Python reference."""
import math
import random
from collections import Counter

import pytest
import torch

from minillm.sampling import apply_min_p, apply_penalties, apply_top_k_top_p, sample
from minillm.sampling_params import SamplingParams

PROBS = [0.5, 0.2, 0.15, 0.1, 0.05]
KNOWN = torch.log(torch.tensor([PROBS]))

# (SamplingParams keyword, value, tokens that must remain)
SUPPORT_CASES = [
    ("top_p", 0.7, {0, 1}),  # 0.5 + 0.2 reaches 0.7 exactly: the boundary counts as reached
    ("top_p", 0.71, {0, 1, 2}),
    ("top_p", 0.3, {0}),  # the top token alone already reaches it
    ("top_k", 2, {0, 1}),
    ("top_k", 1, {0}),
    ("top_k", 9, {0, 1, 2, 3, 4}),  # more than the vocabulary: keeps all
    ("top_k", -1, {0, 1, 2, 3, 4}),
    ("min_p", 0.35, {0, 1}),  # 0.15 < 0.35 * 0.5
    ("min_p", 0.29, {0, 1, 2}),  # 0.15 >= 0.29 * 0.5
    ("min_p", 1.0, {0}),
]


def one_row(**kwargs):
    """Call `sample` for the KNOWN distribution, a fresh prompt and no history."""
    return dict(params=[SamplingParams(**kwargs)], prompt_ids=[[1]], output_ids=[[]],
                eos_token_ids=[])


def filtered(field, value):
    """The processed probabilities of KNOWN after one filter, through the public helper."""
    if field == "min_p":
        logits = apply_min_p(KNOWN, torch.tensor([value]))
    else:
        top_k, top_p = (value, 1.0) if field == "top_k" else (0, value)
        logits = apply_top_k_top_p(KNOWN, torch.tensor([top_k]), torch.tensor([top_p]))
    return logits.softmax(-1)[0]


def draw_many(logits, num, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    args = one_row(**kwargs)
    return Counter(sample(logits, generators=[generator], **args).token_ids[0] for _ in range(num))


def chi_square(counts: Counter, probs: list[float], num: int) -> float:
    return sum((counts[t] - num * p) ** 2 / (num * p) for t, p in enumerate(probs) if p > 0)


@pytest.mark.parametrize("field,value,support", SUPPORT_CASES)
def test_filters_keep_exactly_the_expected_support(field, value, support):
    kept_mass = sum(PROBS[t] for t in support)
    expected = [PROBS[t] / kept_mass if t in support else 0.0 for t in range(len(PROBS))]
    assert filtered(field, value).tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("field,value,support", SUPPORT_CASES)
def test_draws_follow_the_filtered_distribution(field, value, support):
    num = 3000
    counts = draw_many(KNOWN, num, **{field: value})
    assert set(counts) == support
    kept_mass = sum(PROBS[t] for t in support)
    expected = [PROBS[t] / kept_mass if t in support else 0.0 for t in range(len(PROBS))]
    assert chi_square(counts, expected, num) < 20.5  # p = 0.001 at 4 degrees of freedom


def test_top_p_reached_exactly_keeps_just_those_tokens():
    # Probabilities in hundredths, top_p the sum of the k most likely: float32 rounding must
    # neither let token k+1 in nor drop a token of a distribution's tail when top_p is 1.
    rng = random.Random()
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, 100), rng.randrange(2, 6)))
        probs = sorted((b - a) / 100 for a, b in zip([0, *cuts], [*cuts, 100]))[::-1]
        k = rng.randrange(1, len(probs))
        top_p = round(sum(probs[:k]), 2)
        logits = apply_top_k_top_p(torch.log(torch.tensor([probs])), torch.tensor([0]),
                                   torch.tensor([top_p]))
        assert int(logits.isfinite().sum()) == k, (probs, top_p)
    tail = apply_top_k_top_p(torch.tensor([[20.0, 0.0]]), torch.tensor([0]), torch.tensor([1.0]))
    assert tail.isfinite().all()  # a 2e-9 token stays when top_p is 1


def test_filters_compose_top_k_then_top_p_then_min_p():
    # top_k=3 renormalises to [0.588, 0.235, 0.176]: top_p=0.8 then needs tokens 0 and 1.
    assert draw_many(KNOWN, 2000, top_k=3, top_p=0.8).keys() == {0, 1}
    # top_p=0.9 keeps {0,1,2,3}; min_p=0.25 then drops 0.1 < 0.125.
    assert draw_many(KNOWN, 2000, top_p=0.9, min_p=0.25).keys() == {0, 1, 2}


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_sampled_frequencies_match_softmax(temperature):
    rng = random.Random(temperature)
    logits = [rng.gauss(0, 1.5) for _ in range(8)]
    scaled = [math.exp(x / temperature) for x in logits]
    probs = [x / sum(scaled) for x in scaled]
    num = 6000
    counts = draw_many(torch.tensor([logits]), num, seed=3, temperature=temperature)
    assert chi_square(counts, probs, num) < 24.3  # p = 0.001 at 7 degrees of freedom


@pytest.mark.parametrize("temperature", [0.0, 1e-6])
def test_greedy_is_argmax(temperature):
    logits = torch.randn(16, 50)
    params = [SamplingParams(temperature=temperature)] * 16
    out = sample(logits, params, [[0]] * 16, [[]] * 16, [torch.Generator()] * 16, [])
    assert out.token_ids == [max(range(50), key=lambda t: row[t]) for row in logits.tolist()]


def test_seeded_row_is_the_same_alone_and_in_any_batch():
    steps = [torch.randn(6, 40) for _ in range(25)]
    seeded = SamplingParams(seed=7, top_k=20, top_p=0.9)
    others = [SamplingParams(seed=1), SamplingParams(temperature=0.7, repetition_penalty=1.3),
              SamplingParams(temperature=0), SamplingParams(min_p=0.1, presence_penalty=1.0),
              SamplingParams(seed=7, frequency_penalty=0.5)]

    def run(rows: list[int], params: list[SamplingParams]) -> list[list[int]]:
        generators = [torch.Generator().manual_seed(p.seed if p.seed is not None else 99 + r)
                      for r, p in enumerate(params)]
        outputs = [[] for _ in rows]
        for logits in steps:
            out = sample(logits[rows], params, [[3, 4]] * len(rows), outputs, generators, [0])
            for history, token in zip(outputs, out.token_ids):
                history.append(token)
        return outputs

    alone = run([0], [seeded])[0]
    assert run([1, 2, 0, 3], [others[0], others[1], seeded, others[2]])[2] == alone
    assert run([4, 0, 5], [others[3], seeded, others[4]])[1] == alone
    assert run([0], [SamplingParams(seed=8, top_k=20, top_p=0.9)])[0] != alone


def reference_penalties(logits, prompt, output, repetition, frequency, presence):
    """OpenAI's and vLLM's definitions, one token at a time."""
    logits = list(logits)
    for token in set(prompt) | set(output):
        if logits[token] > 0:
            logits[token] /= repetition
        else:
            logits[token] *= repetition
    for token, count in Counter(output).items():
        logits[token] -= frequency * count + presence
    return logits


def test_penalties_match_the_definitions():
    seed = random.randrange(2**32)  # fresh inputs on every run; the seed is in the message
    rng = random.Random(seed)
    rows, vocab = 7, 30
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3
    prompts = [[rng.randrange(vocab) for _ in range(rng.randrange(0, 12))] for _ in range(rows)]
    outputs = [[rng.randrange(vocab) for _ in range(rng.randrange(0, 20))] for _ in range(rows)]
    repetition = [rng.uniform(0.5, 2.0) for _ in range(rows)]
    frequency = [rng.uniform(-2, 2) for _ in range(rows)]
    presence = [rng.uniform(-2, 2) for _ in range(rows)]
    got = apply_penalties(logits, prompts, outputs, torch.tensor(repetition),
                          torch.tensor(frequency), torch.tensor(presence))
    for row in range(rows):
        want = reference_penalties(logits[row].tolist(), prompts[row], outputs[row],
                                   repetition[row], frequency[row], presence[row])
        assert got[row].tolist() == pytest.approx(want, rel=1e-5, abs=1e-5), f"seed {seed}"


def test_penalties_steer_greedy_sampling():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    args = dict(prompt_ids=[[2]], output_ids=[[0]], generators=[None], eos_token_ids=[])
    assert sample(logits, [SamplingParams(temperature=0)], **args).token_ids == [0]
    for penalty in [dict(repetition_penalty=1.1), dict(frequency_penalty=0.2),
                    dict(presence_penalty=0.2)]:
        assert sample(logits, [SamplingParams(temperature=0, **penalty)], **args).token_ids == [1]


def test_min_tokens_masks_eos_and_stop_tokens_until_reached():
    eos, stop = 0, 3
    logits = torch.tensor([[9.0, 0.0, 0.0, 8.0, 0.0]] * 4)
    params = [SamplingParams(min_tokens=3, stop_token_ids=[stop], temperature=0),
              SamplingParams(min_tokens=3, stop_token_ids=[stop], ignore_eos=True),
              SamplingParams(min_tokens=3, stop_token_ids=[stop], temperature=0),
              SamplingParams(min_tokens=2, temperature=0)]
    outputs = [[1, 1], [1, 1], [1, 1, 1], [1, 1]]
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        out = sample(logits, params, [[1]] * 4, outputs, [generator] * 4, [eos])
        assert out.token_ids[0] not in (eos, stop) and out.token_ids[1] not in (eos, stop)
        assert out.token_ids[2:] == [eos, eos]


def test_logprobs_come_from_the_raw_distribution():
    logits = torch.randn(5, 40) * 2
    params = [SamplingParams(logprobs=3, temperature=0.3, top_k=5, repetition_penalty=1.5),
              SamplingParams(logprobs=0, presence_penalty=1.0, min_p=0.2),
              SamplingParams(temperature=0),
              SamplingParams(logprobs=7, top_p=0.5),
              SamplingParams(logprobs=40, temperature=2.0)]
    out = sample(logits, params, [[1, 2]] * 5, [[3, 4, 4]] * 5,
                 [torch.Generator().manual_seed(r) for r in range(5)], [0])
    for row, p in enumerate(params):
        values = logits[row].tolist()
        log_z = math.log(sum(math.exp(v) for v in values))
        reference = [v - log_z for v in values]
        if p.logprobs is None:  # no logprobs asked: none computed (vLLM's behaviour)
            assert out.logprobs[row] is None and out.top_logprobs[row] is None
            continue
        assert out.logprobs[row] == pytest.approx(reference[out.token_ids[row]], abs=1e-5)
        best = sorted(range(40), key=lambda t: -reference[t])[:p.logprobs]
        assert list(out.top_logprobs[row]) == best
        assert list(out.top_logprobs[row].values()) == pytest.approx(
            [reference[t] for t in best], abs=1e-5)


@pytest.mark.parametrize("field,value", [
    ("n", 0), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.01), ("top_k", -2),
    ("min_p", -0.01), ("min_p", 1.5), ("presence_penalty", 2.5), ("presence_penalty", -2.1),
    ("frequency_penalty", 2.01), ("frequency_penalty", -3), ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0), ("max_tokens", 0), ("min_tokens", -1), ("min_tokens", 17),
    ("logprobs", -1), ("stop", ""), ("stop", ["ok", ""]),
])
def test_bad_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_sampling_params_defaults_and_normalisation():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p, p.max_tokens, p.min_tokens) == \
        (1, 1.0, 1.0, 0, 0.0, 16, 0)
    assert (p.stop, p.stop_token_ids, p.logprobs, p.seed, p.greedy) == ([], [], None, None, False)
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop_token_ids=(5, 6)).stop_token_ids == [5, 6]
    assert SamplingParams(max_tokens=None, min_tokens=100).max_tokens is None
    assert SamplingParams(temperature=0).greedy and SamplingParams(temperature=1e-6).greedy
    assert SamplingParams(top_k=-1, top_p=1.0, min_p=1.0, repetition_penalty=3.0).top_k == -1
