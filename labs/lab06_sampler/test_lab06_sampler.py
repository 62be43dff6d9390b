"""Lab 6 tests. `make grade LAB=lab06` grades all tasks, `make grade LAB=lab06 TASK=6.4` one.

Logits are drawn fresh each run (the `rng` fixture; the header prints the seed). Masks and
penalties are checked exactly against a plain per-token computation written here, independent
of minillm; draws are checked with fixed generator seeds, exactly (the same `torch.multinomial`
call the engine makes) and statistically (frequencies over thousands of seeded rows).
`make grade LAB=lab06 INTEGRATION=1` also runs `LLM.generate` with your `sample` in the engine.
"""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from minillm.sampling_params import SamplingParams

STARTER = "sampler.py"
REFERENCE = "minillm.sampling"

NEG_INF = float("-inf")


def random_logits(rng, rows: int, vocab: int) -> torch.Tensor:
    """Fresh float32 logits with a spread drawn per test (flat to very peaked)."""
    g = torch.Generator().manual_seed(rng.randrange(2 ** 62))
    return torch.randn(rows, vocab, generator=g) * rng.uniform(0.5, 6.0)


def check_masked(got: torch.Tensor, logits: torch.Tensor, keep: torch.Tensor, what: str):
    """`got` must equal `logits` where `keep` holds and be -inf elsewhere, row by row."""
    assert got.shape == logits.shape, f"{what}: shape {tuple(got.shape)}, expected " \
                                      f"{tuple(logits.shape)}"
    for row in range(logits.shape[0]):
        want = torch.where(keep[row], logits[row], NEG_INF)
        if not torch.equal(got[row], want):
            kept = sorted(torch.nonzero(got[row] > NEG_INF).flatten().tolist())
            expected = sorted(torch.nonzero(keep[row]).flatten().tolist())
            assert kept == expected, (f"{what}, row {row} (logits {logits[row].tolist()}): kept "
                                      f"token ids {kept}, expected {expected}")
            assert False, f"{what}, row {row}: kept tokens changed value: {got[row].tolist()}, " \
                          f"expected {want.tolist()}"


def unchanged(impl_fn, logits: torch.Tensor, *args):
    before = logits.clone()
    out = impl_fn(logits, *args)
    assert torch.equal(logits, before), \
        f"{impl_fn.__name__} changed the tensor it was given (it must return a new one)"
    return out


# -- 6.1 min_tokens -----------------------------------------------------------------------------
def expected_min_tokens_keep(logits, params, output_ids, eos_ids):
    keep = torch.ones_like(logits, dtype=torch.bool)
    for row, (p, out) in enumerate(zip(params, output_ids)):
        if len(out) < p.min_tokens:
            for t in [*eos_ids, *p.stop_token_ids]:
                if 0 <= t < logits.shape[1]:
                    keep[row, t] = False
    return keep


@pytest.mark.task6_1
def test_min_tokens_masks_eos_and_stop_tokens_below_the_minimum(impl, rng):
    vocab = rng.randint(8, 40)
    logits = random_logits(rng, 8, vocab)
    eos_ids = [vocab - 1]
    params, outputs = [], []
    for row in range(8):
        min_tokens = rng.randint(1, 4)
        # Rows exactly at, one below and above their minimum, and ids outside the vocabulary.
        length = [min_tokens, max(min_tokens - 1, 0), min_tokens + 2, rng.randint(0, 5)][row % 4]
        stops = rng.sample(range(vocab - 1), 2) + ([vocab + 3] if row % 3 == 0 else [])
        params.append(SamplingParams(min_tokens=min_tokens, stop_token_ids=stops,
                                     ignore_eos=row % 3 == 1))
        outputs.append([rng.randrange(vocab) for _ in range(length)])
    got = unchanged(impl.apply_min_tokens, logits, params, outputs, eos_ids)
    keep = expected_min_tokens_keep(logits, params, outputs, eos_ids)
    rows = [f"row {r}: {len(o)} outputs, min_tokens {p.min_tokens}, stop ids {p.stop_token_ids}"
            for r, (p, o) in enumerate(zip(params, outputs))]
    check_masked(got, logits, keep, f"apply_min_tokens (EOS {eos_ids}; {'; '.join(rows)})")


@pytest.mark.task6_1
def test_min_tokens_leaves_a_row_at_its_minimum_alone(impl):
    logits = torch.zeros(2, 6)
    params = [SamplingParams(min_tokens=3, stop_token_ids=[2]),
              SamplingParams(min_tokens=3, ignore_eos=True)]
    got = impl.apply_min_tokens(logits, params, [[1, 1, 1], [1, 1]], [5])
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 5] = False
    check_masked(got, logits, keep, "apply_min_tokens, row 0 has exactly min_tokens=3 outputs "
                                    "(nothing masked), row 1 has 2 (EOS 5 masked, "
                                    "ignore_eos or not)")


# -- 6.2 penalties ------------------------------------------------------------------------------
@pytest.mark.task6_2
def test_token_counts(impl, rng):
    vocab = rng.randint(5, 30)
    rows = [[rng.randrange(vocab) for _ in range(rng.choice([0, 1, 5, 17]))] for _ in range(6)]
    got = impl.token_counts(rows, vocab)
    assert tuple(got.shape) == (6, vocab), f"token_counts shape {tuple(got.shape)}, expected " \
                                           f"(6, {vocab})"
    for r, ids in enumerate(rows):
        want = [Counter(ids)[t] for t in range(vocab)]
        assert got[r].tolist() == want, f"token_counts({ids}, vocab={vocab}) row {r}: " \
                                        f"{got[r].tolist()}, expected {want}"


def expected_penalties(logits, prompts, outputs, rep, freq, pres):
    out = logits.clone().double()
    for r in range(logits.shape[0]):
        counts = Counter(outputs[r])
        for t in range(logits.shape[1]):
            x = out[r, t].item()
            if t in counts or t in prompts[r]:
                x = x / rep[r] if x > 0 else x * rep[r]
            x -= freq[r] * counts[t] + pres[r] * (counts[t] > 0)
            out[r, t] = x
    return out.float()


@pytest.mark.task6_2
def test_penalties_against_a_per_token_computation(impl, rng):
    rows, vocab = 6, rng.randint(6, 30)
    logits = random_logits(rng, rows, vocab)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(0, 8))] for _ in range(rows)]
    outputs = [[rng.randrange(vocab) for _ in range(rng.randint(0, 8))] for _ in range(rows)]
    rep = [rng.choice([1.0, 0.5, 1.3, 2.0]) for _ in range(rows)]
    freq = [rng.choice([0.0, 0.4, -0.7, 1.5]) for _ in range(rows)]
    pres = [rng.choice([0.0, 0.6, -1.0, 2.0]) for _ in range(rows)]
    got = unchanged(impl.apply_penalties, logits, prompts, outputs, torch.tensor(rep),
                    torch.tensor(freq), torch.tensor(pres))
    want = expected_penalties(logits, prompts, outputs, rep, freq, pres)
    for r in range(rows):
        bad = [t for t in range(vocab) if not math.isclose(got[r, t].item(), want[r, t].item(),
                                                            rel_tol=1e-5, abs_tol=1e-5)]
        assert not bad, (f"apply_penalties row {r} (prompt {prompts[r]}, output {outputs[r]}, "
                         f"repetition {rep[r]}, frequency {freq[r]}, presence {pres[r]}): token "
                         f"{bad[0]} with logit {logits[r, bad[0]].item():.4f} became "
                         f"{got[r, bad[0]].item():.4f}, expected {want[r, bad[0]].item():.4f}")


@pytest.mark.task6_2
def test_repetition_penalty_lowers_negative_and_positive_logits(impl):
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    got = impl.apply_penalties(logits, [[0]], [[1]], torch.tensor([2.0]), torch.zeros(1),
                               torch.zeros(1))
    want = [1.0, -4.0, 1.0, -1.0]
    assert got[0].tolist() == want, (f"repetition 2 on logits [2, -2, 1, -1], token 0 in the "
                                     f"prompt, token 1 in the output: {got[0].tolist()}, expected "
                                     f"{want} (positive divided, negative multiplied)")


@pytest.mark.task6_2
def test_frequency_and_presence_count_output_tokens_only(impl):
    logits = torch.zeros(1, 4)
    got = impl.apply_penalties(logits, [[0, 0, 0, 2]], [[2, 2, 3]], torch.ones(1),
                               torch.tensor([0.5]), torch.tensor([0.25]))
    want = [0.0, 0.0, -1.25, -0.75]
    assert got[0].tolist() == want, (f"frequency 0.5, presence 0.25, prompt [0, 0, 0, 2], output "
                                     f"[2, 2, 3]: {got[0].tolist()}, expected {want}")


# -- 6.3 temperature ----------------------------------------------------------------------------
@pytest.mark.task6_3
def test_temperature_divides_each_row(impl, rng):
    logits = random_logits(rng, 5, 11)
    temps = [rng.uniform(0.05, 3.0) for _ in range(5)]
    got = unchanged(impl.apply_temperature, logits, torch.tensor(temps))
    for r, t in enumerate(temps):
        want = logits[r] / t
        assert torch.allclose(got[r], want, rtol=1e-6), \
            f"apply_temperature row {r}, temperature {t:.3f}: {got[r].tolist()}, " \
            f"expected {want.tolist()}"


# -- 6.4 top-k, top-p ---------------------------------------------------------------------------
def expected_top_k_top_p_keep(logits, top_k, top_p):
    """Per row, in float64: the top-k by logit, then the nucleus of their renormalised mass."""
    keep = torch.zeros_like(logits, dtype=torch.bool)
    for r in range(logits.shape[0]):
        order = sorted(range(logits.shape[1]), key=lambda t: -logits[r, t].item())
        k = top_k[r] if 0 < top_k[r] < len(order) else len(order)
        kept = order[:k]
        weights = [math.exp(logits[r, t].item() - logits[r, kept[0]].item()) for t in kept]
        total, mass = sum(weights), 0.0
        for t, w in zip(kept, weights):
            if top_p[r] < 1 and mass >= top_p[r]:
                break
            keep[r, t] = True
            mass += w / total
    return keep


def nucleus_boundaries(logits, top_k):
    """Each row's cumulative masses (float64) of its top-k, where top_p must not fall."""
    out = []
    for r in range(logits.shape[0]):
        values = logits[r].double().sort(descending=True).values
        k = top_k[r] if 0 < top_k[r] < len(values) else len(values)
        probs = values[:k].softmax(dim=0)
        out.append(probs.cumsum(dim=0).tolist())
    return out


@pytest.mark.task6_4
@pytest.mark.parametrize("vocab", [7, 50, 300])
def test_top_k_top_p_on_random_rows(impl, rng, vocab):
    rows = 12
    logits = random_logits(rng, rows, vocab)
    top_k = [rng.choice([0, -1, 1, 2, 5, vocab - 1, vocab, vocab + 7]) for _ in range(rows)]
    top_p = []
    for masses in nucleus_boundaries(logits, top_k):
        p = rng.choice([1.0, rng.uniform(0.05, 0.999)])
        # Random values a hair from a cumulative mass would test float rounding, not the rule.
        while p < 1 and any(abs(p - m) < 1e-4 for m in masses):
            p = rng.uniform(0.05, 0.999)
        top_p.append(p)
    got = unchanged(impl.apply_top_k_top_p, logits, torch.tensor(top_k), torch.tensor(top_p))
    keep = expected_top_k_top_p_keep(logits, top_k, top_p)
    for r in range(rows):
        check_masked(got[r:r + 1], logits[r:r + 1], keep[r:r + 1],
                     f"apply_top_k_top_p row {r}, top_k {top_k[r]}, top_p {top_p[r]:.4f}")


@pytest.mark.task6_4
@pytest.mark.parametrize("top_p,kept", [(0.5, 1), (0.6, 2), (0.75, 2), (0.76, 3), (0.875, 3),
                                        (0.9, 4), (1.0, 4)])
def test_top_p_on_its_boundary(impl, top_p, kept):
    probs = [0.5, 0.25, 0.125, 0.125]
    logits = torch.tensor([probs]).log()
    got = impl.apply_top_k_top_p(logits, torch.tensor([0]), torch.tensor([top_p]))
    ids = torch.nonzero(got[0] > NEG_INF).flatten().tolist()
    assert ids == list(range(kept)), (f"top_p {top_p} over probabilities {probs}: kept token ids "
                                      f"{ids}, expected {list(range(kept))} (the smallest set "
                                      f"whose mass reaches top_p)")


@pytest.mark.task6_4
def test_top_p_is_taken_over_what_top_k_kept(impl):
    probs = [0.3, 0.2, 0.2, 0.1, 0.1, 0.1]
    logits = torch.tensor([probs]).log()
    got = impl.apply_top_k_top_p(logits, torch.tensor([2]), torch.tensor([0.5]))
    ids = torch.nonzero(got[0] > NEG_INF).flatten().tolist()
    assert ids == [0], (f"top_k 2 then top_p 0.5 over probabilities {probs}: kept {ids}, expected "
                        f"[0] (top-k leaves [0.6, 0.4] once renormalised; 0.6 reaches 0.5)")


@pytest.mark.task6_4
def test_top_p_one_keeps_a_long_tail(impl, rng):
    vocab = 400
    logits = random_logits(rng, 3, vocab)
    logits[:, : vocab // 2] -= 40  # half the tokens with a mass near 1e-17 each
    got = impl.apply_top_k_top_p(logits, torch.tensor([0, -1, vocab]), torch.ones(3))
    dropped = [int((got[r] == NEG_INF).sum()) for r in range(3)]
    assert dropped == [0, 0, 0], f"top_p 1 (top_k 0, -1, {vocab}) over a row with a long tail " \
                                 f"of tiny probabilities dropped {dropped} tokens, expected none"


# -- 6.5 min-p ----------------------------------------------------------------------------------
@pytest.mark.task6_5
def test_min_p_on_random_rows(impl, rng):
    rows, vocab = 10, rng.randint(5, 80)
    logits = random_logits(rng, rows, vocab)
    ratios = (logits.double() - logits.double().max(dim=1, keepdim=True).values).exp()
    min_p = []
    for r in range(rows):
        p = rng.choice([0.0, 1.0, rng.uniform(0.001, 0.9)])
        while 0 < p < 1 and (ratios[r] - p).abs().min() < 1e-4:
            p = rng.uniform(0.001, 0.9)
        min_p.append(p)
    got = unchanged(impl.apply_min_p, logits, torch.tensor(min_p))
    keep = ratios >= torch.tensor(min_p, dtype=torch.float64)[:, None]
    for r in range(rows):
        check_masked(got[r:r + 1], logits[r:r + 1], keep[r:r + 1],
                     f"apply_min_p row {r}, min_p {min_p[r]:.4f} (probabilities "
                     f"{logits[r].softmax(0).tolist()})")


@pytest.mark.task6_5
def test_min_p_is_relative_to_the_top_probability(impl):
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    got = impl.apply_min_p(logits, torch.tensor([0.6]))
    ids = torch.nonzero(got[0] > NEG_INF).flatten().tolist()
    assert ids == [0, 1], f"min_p 0.6 over probabilities [0.4, 0.3, 0.2, 0.1] kept {ids}, " \
                          f"expected [0, 1] (those of at least 0.6 * 0.4 = 0.24)"


# -- 6.6 the whole sampler ----------------------------------------------------------------------
def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def run_sample(impl, logits, params, prompts=None, outputs=None, seeds=None, eos=(0,)):
    n = logits.shape[0]
    return impl.sample(logits, params, prompts or [[] for _ in range(n)],
                       outputs or [[] for _ in range(n)], generators(seeds or range(n)), list(eos))


@pytest.mark.task6_6
def test_sampled_rows_draw_with_their_own_generator(impl, rng):
    rows, vocab = 6, rng.randint(5, 60)
    logits = random_logits(rng, rows, vocab)
    temps = [rng.uniform(0.3, 2.0) for _ in range(rows)]
    seeds = [rng.randrange(2 ** 40) for _ in range(rows)]
    got = run_sample(impl, logits, [SamplingParams(temperature=t) for t in temps], seeds=seeds)
    for r in range(rows):
        probs = (logits[r] / temps[r]).softmax(dim=0)
        want = int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seeds[r])))
        assert got.token_ids[r] == want, (f"row {r}, temperature {temps[r]:.3f}, seed {seeds[r]}: "
                                          f"token {got.token_ids[r]}, expected {want} "
                                          f"(torch.multinomial(probs, 1, generator=generators[r]))")


@pytest.mark.task6_6
def test_a_rows_token_does_not_depend_on_the_batch(impl, rng):
    rows, vocab = 5, rng.randint(5, 60)
    logits = random_logits(rng, rows, vocab)
    params = [SamplingParams(temperature=rng.uniform(0.5, 1.5), top_p=rng.uniform(0.5, 1.0),
                             top_k=rng.choice([0, 3, 10]), min_p=rng.choice([0.0, 0.05]))
              for _ in range(rows)]
    params[2] = SamplingParams(temperature=0)
    seeds = [rng.randrange(2 ** 40) for _ in range(rows)]
    batch = run_sample(impl, logits, params, seeds=seeds).token_ids
    alone = [run_sample(impl, logits[r:r + 1], [params[r]], seeds=[seeds[r]]).token_ids[0]
             for r in range(rows)]
    assert batch == alone, (f"tokens of {rows} rows sampled together {batch}, each alone {alone}: "
                            f"a row's draw must use generators[row] only")


def expected_probs(row_logits, p: SamplingParams) -> torch.Tensor:
    """The distribution a sampled row draws from, per the module docstring's order, float64."""
    x = row_logits.double() / p.temperature
    keep = expected_top_k_top_p_keep(x[None], [p.top_k], [p.top_p])[0]
    x = x.masked_fill(~keep, NEG_INF)
    probs = x.softmax(dim=0)
    return probs.masked_fill(probs < p.min_p * probs.max(), 0.0) / \
        probs.masked_fill(probs < p.min_p * probs.max(), 0.0).sum()


@pytest.mark.task6_6
@pytest.mark.parametrize("temperature,top_k,top_p,min_p", [
    (0.5, 0, 0.8, 0.0), (2.0, 0, 0.7, 0.0), (1.0, 4, 0.9, 0.0), (2.5, 0, 1.0, 0.3),
    (0.4, 5, 1.0, 0.05), (1.7, 6, 0.85, 0.1)])
def test_draw_frequencies_follow_the_filtered_distribution(impl, temperature, top_k, top_p, min_p):
    draws, vocab = 3000, 8
    logits = torch.tensor([[2.0, 1.6, 1.3, 1.0, 0.6, 0.2, -0.4, -1.0]]).expand(draws, vocab)
    p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    tokens = run_sample(impl, logits.contiguous(), [p] * draws, seeds=range(draws)).token_ids
    want = expected_probs(logits[0], p)
    freq = Counter(tokens)
    setting = f"temperature {temperature}, top_k {top_k}, top_p {top_p}, min_p {min_p}"
    outside = sorted(t for t in freq if want[t] == 0)
    assert not outside, f"{setting}: drew tokens {outside}, which the filters remove (expected " \
                        f"probabilities {[round(x, 4) for x in want.tolist()]})"
    for t in range(vocab):
        share, expected = freq[t] / draws, want[t].item()
        sigma = math.sqrt(expected * (1 - expected) / draws)
        assert abs(share - expected) <= 5 * sigma + 1e-3, (
            f"{setting}, {draws} draws seeded 0..{draws - 1}: token {t} drawn {share:.3f} of the "
            f"time, expected {expected:.3f} (probabilities "
            f"{[round(x, 3) for x in want.tolist()]})")


@pytest.mark.task6_6
def test_greedy_rows_take_the_argmax_after_min_tokens_and_penalties(impl, rng):
    rows, vocab = 6, rng.randint(6, 40)
    logits = random_logits(rng, rows, vocab)
    prompts = [[rng.randrange(vocab) for _ in range(5)] for _ in range(rows)]
    outputs = [[rng.randrange(vocab) for _ in range(rng.randint(0, 4))] for _ in range(rows)]
    params = [SamplingParams(temperature=0, repetition_penalty=rng.choice([1.0, 1.5, 3.0]),
                             frequency_penalty=rng.choice([0.0, 1.0]),
                             presence_penalty=rng.choice([0.0, 2.0]), min_tokens=2)
              for _ in range(rows)]
    eos = [int(logits[0].argmax())]  # row 0's favourite is EOS, and row 0 has no output yet
    outputs[0] = []
    favourite, second = logits[1].topk(2).indices.tolist()  # row 1's favourite is in its prompt,
    logits[1] = logits[1].clamp(max=1.0)  # and a penalty of 3 takes it below others
    logits[1, favourite], logits[1, second] = 2.0, 1.5
    prompts[1][0] = favourite
    params[1] = SamplingParams(temperature=0, repetition_penalty=3.0, min_tokens=2)
    got = run_sample(impl, logits, params, prompts, outputs, eos=eos).token_ids
    masked = torch.where(expected_min_tokens_keep(logits, params, outputs, eos), logits, NEG_INF)
    penalised = expected_penalties(
        masked, prompts, outputs, [p.repetition_penalty for p in params],
        [p.frequency_penalty for p in params], [p.presence_penalty for p in params])
    want = penalised.argmax(dim=1).tolist()
    penalties = [(p.repetition_penalty, p.frequency_penalty, p.presence_penalty) for p in params]
    assert got == want, (f"greedy rows (EOS {eos}, prompts {prompts}, outputs {outputs}, "
                         f"min_tokens 2, (repetition, frequency, presence) {penalties}): tokens "
                         f"{got}, expected {want}")


@pytest.mark.task6_6
def test_logprobs_are_read_before_anything_changes_the_logits(impl, rng):
    rows, vocab = 4, rng.randint(8, 40)
    logits = random_logits(rng, rows, vocab)
    params = [SamplingParams(temperature=0, repetition_penalty=2.0, logprobs=3),
              SamplingParams(temperature=0.7, top_k=3, frequency_penalty=1.0, logprobs=0),
              SamplingParams(temperature=0.9),
              SamplingParams(temperature=1.2, min_p=0.2, presence_penalty=1.5, logprobs=2)]
    prompts = [[rng.randrange(vocab) for _ in range(6)] for _ in range(rows)]
    outputs = [[rng.randrange(vocab) for _ in range(3)] for _ in range(rows)]
    got = run_sample(impl, logits, params, prompts, outputs, seeds=[7, 8, 9, 10])
    raw = logits.log_softmax(dim=1)
    for r, p in enumerate(params):
        token = got.token_ids[r]
        if p.logprobs is None:
            assert got.logprobs[r] is None and got.top_logprobs[r] is None, \
                f"row {r} asked for no logprobs, got {got.logprobs[r]} and {got.top_logprobs[r]}"
            continue
        want = raw[r, token].item()
        assert math.isclose(got.logprobs[r], want, abs_tol=1e-5), (
            f"row {r} ({p.temperature=}, {p.repetition_penalty=}, {p.frequency_penalty=}, "
            f"{p.presence_penalty=}): logprob of token {token} {got.logprobs[r]:.5f}, expected "
            f"{want:.5f}, log_softmax of the logits as given, before penalties and filters")
        rank = int((raw[r] > raw[r, token]).sum()) + 1
        assert got.ranks[r] == rank, f"row {r}: rank of token {token} {got.ranks[r]}, " \
                                     f"expected {rank}"
        best = raw[r].topk(p.logprobs).indices.tolist()
        assert list(got.top_logprobs[r]) == best, \
            f"row {r}: top_logprobs ids {list(got.top_logprobs[r])}, expected {best}"


# -- integration: your sampler in the engine ----------------------------------------------------
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_engine_with_your_sampler_generates_the_same_tokens(impl, monkeypatch):
    import minillm.engine.model_runner as model_runner
    from minillm import LLM

    prompts = ["Once upon a time", "The little dog ran to the", "A"]
    params = [SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=1, max_tokens=8,
                             repetition_penalty=1.3, logprobs=2),
              SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=0.5,
                             max_tokens=8, min_tokens=4),
              SamplingParams(temperature=1.3, min_p=0.1, seed=5, max_tokens=8)]
    llm = LLM()

    def run():
        outputs = llm.generate(prompts, params, use_tqdm=False)
        return [(o.outputs[0].token_ids, o.outputs[0].cumulative_logprob) for o in outputs]

    want = run()
    monkeypatch.setattr(model_runner, "sample", impl.sample)
    got = run()
    for prompt, (ids, logprob), (want_ids, want_logprob) in zip(prompts, got, want):
        assert ids == want_ids, f"{prompt!r}: tokens {ids} with your sampler, {want_ids} with " \
                                f"minillm's"
        assert (logprob is None) == (want_logprob is None) and \
            (logprob is None or math.isclose(logprob, want_logprob, abs_tol=1e-4)), \
            f"{prompt!r}: cumulative logprob {logprob}, expected {want_logprob}"
