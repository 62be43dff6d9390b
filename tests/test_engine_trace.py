"""Chapter 7's helpers (minillm.bench.engine_trace) against hand-worked and independent values."""
import math

import pytest
import torch

from minillm.assets import DEFAULT_MODEL
from minillm.bench.engine_trace import (detokenize_steps, sampler_stages, side_by_side,
                                        state_changes)
from minillm.model import load_tokenizer


def test_side_by_side_pads_and_cuts():
    text = side_by_side("a\nbb", "1234567\nx\ny", width=5, titles=("L", "R"))
    assert text.splitlines() == ["L     │ R", "----- │ -----", "a     │ 1234…",
                                 "bb    │ x", "      │ y"]


def test_state_changes_lists_only_what_changed():
    before = {"A": {"computed": 0, "outputs": []}, "B": {"computed": 5, "outputs": [1]}}
    after = {"A": {"computed": 4, "outputs": [9]}, "B": {"computed": 5, "outputs": [1]}}
    assert state_changes(before, after) == ["A.computed: 0 -> 4", "A.outputs: [] -> [9]"]


def expected_final(logits, temperature, top_k, top_p, min_p, rep, prompt):
    """The sampled distribution computed token by token in float64."""
    x = logits.double().clone()
    for t in set(prompt):
        x[t] = x[t] / rep if x[t] > 0 else x[t] * rep
    x = x / temperature
    order = x.argsort(descending=True).tolist()
    kept = order[:top_k] if top_k > 0 else order
    probs = torch.softmax(x[kept], 0).tolist()
    nucleus, mass = [], 0.0
    for t, p in zip(kept, probs):
        if mass >= top_p and top_p < 1:
            break
        nucleus.append(t)
        mass += p
    final = torch.zeros_like(x)
    final[nucleus] = torch.softmax(x[nucleus], 0)
    final[final < min_p * final.max()] = 0
    return final / final.sum()


@pytest.mark.parametrize("seed", range(5))
def test_sampler_stages_end_in_the_sampled_distribution(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, generator=g) * 3
    prompt = torch.randint(0, 64, (10,), generator=g).tolist()
    args = dict(temperature=0.7 + seed / 5, top_k=[0, 5, 20, 40, 64][seed],
                top_p=[1.0, 0.9, 0.63, 0.8, 0.5][seed], min_p=[0.0, 0.05, 0.1, 0.0, 0.2][seed])
    stages = sampler_stages(logits, repetition_penalty=1.5, prompt_ids=prompt, **args)
    assert [s.name.split()[0] for s in stages] == ["raw", "penalties", "temperature", "top-k",
                                                   "top-p", "min-p"]
    want = expected_final(logits, args["temperature"], args["top_k"], args["top_p"],
                          args["min_p"], 1.5, prompt)
    assert torch.allclose(stages[-1].probs.double(), want, atol=1e-6), f"seed {seed}, {args}"
    kept = [s.kept for s in stages]
    assert kept[:3] == [64, 64, 64] and kept == sorted(kept, reverse=True), kept
    assert all(math.isclose(float(s.probs.sum()), 1.0, abs_tol=1e-5) for s in stages)


def test_detokenize_steps_emit_the_decoded_text_and_hold_back_a_stop_prefix():
    tok = load_tokenizer(DEFAULT_MODEL)
    prompt = tok.encode("She said:")
    output = tok.encode(" café, the end of it", add_special_tokens=False)
    steps = detokenize_steps(tok, prompt, output)
    assert "".join(s.emitted for s in steps) == tok.decode(output)
    assert any(s.emitted == "" for s in steps), "é is two byte tokens: the first emits nothing"
    stopped = detokenize_steps(tok, prompt, output, stop=["the end"])
    assert stopped[-1].stop == "the end" and stopped[-1].visible == " café, "
    for s in stopped:  # a stream never shows text that a later token turns into the stop string
        assert " café, the end".startswith(s.visible) and "the" not in s.visible
    assert max(s.held_back for s in stopped) > 0
