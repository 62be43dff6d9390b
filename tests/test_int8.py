"""`quantization="int8"`: per-channel int8 weights, 8-bit dynamic activations (fbgemm).

- One layer against float64 math on fresh random inputs: the weights round-trip within half a
  step of their channel's scale, and the product is within the error that 8-bit activations
  allow (a saturated 16-bit sum, the AVX2 pitfall the 7-bit weights avoid, is far outside it;
  the adversarial case below provokes one with 8-bit weights).
- The whole engine: held-out perplexity within 1 % of float32's; greedy agreement printed.
- Where int8 cannot run, a clear error.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minillm import LLM
from minillm.assets import HELD_OUT_TEXT
from minillm.bench.accuracy import PROMPTS, agreement, measure, windows
from minillm.config import EngineConfig
from minillm.model.int8_linear import WEIGHT_MAX, Int8Linear


def error_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The most 8-bit asymmetric activations (one scale over [min(x, 0), max(x, 0)]) can move
    each output: half a step per input, times the weights' magnitudes, plus float32 rounding."""
    step = (x.max().clamp_min(0) - x.min().clamp_max(0)) / 255
    return (step / 2) * weight.abs().sum(1) * 1.01 + 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_int8_linear_against_float64(seed):
    gen = torch.Generator().manual_seed(1000 + seed)
    out_features, in_features, rows = 96, 160, 7
    weight = torch.randn(out_features, in_features, generator=gen) * torch.rand(
        out_features, 1, generator=gen)  # channels of different ranges: per-channel scales
    bias = torch.randn(out_features, generator=gen)
    x = torch.randn(rows, in_features, generator=gen) * 3
    layer = Int8Linear(weight, bias)
    deq = layer.dequantized_weight().double()
    scale = weight.abs().amax(1, keepdim=True).double() / WEIGHT_MAX
    assert (deq - weight.double()).abs().le(scale / 2 + 1e-7).all(), "weights off by > half a step"
    assert (deq / scale).round().abs().max() <= WEIGHT_MAX
    expected = F.linear(x.double(), deq, bias.double())
    error = (layer(x).double() - expected).abs()
    bound = error_bound(x.double(), deq)
    assert (error <= bound).all(), f"seed {seed}: error {error.max():.3g} > bound {bound.min():.3g}"


def test_int8_linear_never_saturates():
    """Every pair of products at its extreme: 255 x 63 x 2 fits a 16-bit sum; with weights up
    to 127 (and 8-bit activations) fbgemm's AVX2 path would clip it to 32,767."""
    in_features = 64
    weight = torch.ones(4, in_features)
    weight[1] = -1
    x = torch.full((3, in_features), 5.0)
    x[1] = -5.0
    x[2, ::2] = 0.0
    layer = Int8Linear(weight, None)
    expected = F.linear(x.double(), layer.dequantized_weight().double())
    error = (layer(x).double() - expected).abs()
    assert (error <= error_bound(x.double(), weight.double())).all(), error.max()


def test_int8_engine_perplexity_within_one_percent():
    reference, candidate = LLM(dtype="float32"), LLM(dtype="float32", quantization="int8")
    ids = reference.get_tokenizer()(HELD_OUT_TEXT.read_text(encoding="utf-8"))["input_ids"]
    token_windows = windows(ids, 256)[:8]
    ref, cand = measure(reference, token_windows, 32), measure(candidate, token_windows, 32)
    share, identical = agreement(ref.greedy, cand.greedy)
    print(f"\nheld-out perplexity over {ref.tokens_scored} tokens: float32 {ref.perplexity:.3f}, "
          f"int8 {cand.perplexity:.3f}; greedy agreement {100 * share:.0f} % of tokens, "
          f"{identical}/{len(PROMPTS)} identical")
    assert abs(cand.perplexity / ref.perplexity - 1) < 0.01, (ref.perplexity, cand.perplexity)
    assert cand.perplexity != ref.perplexity, "int8 was not applied"


def test_int8_refused_where_it_cannot_run():
    with pytest.raises(ValueError, match="float32"):
        LLM(dtype="bfloat16", quantization="int8")
    with pytest.raises(ValueError, match="quantization must be one of"):
        EngineConfig(quantization="int4")
