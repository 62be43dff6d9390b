"""What minillm does where a CPU fast path cannot run: each fallback forced or simulated here, on
whatever CPU runs the tests. (The C kernel's own build fallbacks: tests/test_cpu_backend.py.)

What is proven here:

* Packing for oneDNN is decided by a probe, once per dtype: on this CPU it accepts exactly what
  torch's oneDNN supports (bfloat16 needs AVX-512 BW+VL+DQ or AVX-NE-CONVERT); a probe that
  raises or computes wrong values refuses, and the model keeps nn.Linear with one log line;
  `MINILLM_DISABLE_PACKING=1` refuses on any machine.
* The engine generates in float32 and in bfloat16 on this CPU, packed where the probe accepts,
  its first tokens the ones transformers ranks first.
* With `MINILLM_DISABLE_PACKING=1` and `MINILLM_DISABLE_CPU_KERNEL=1` the engine runs nn.Linear
  and the torch backend, says so in one log line each, and generates the same tokens.
"""
from __future__ import annotations

import logging
import platform
from pathlib import Path

import pytest
import torch
from checkpoints import prompts_of_lengths
from torch import nn
from transformers import AutoModelForCausalLM

from minillm import LLM, SamplingParams
from minillm.model import load_model
from minillm.model.packed_linear import PackedLinear, can_pack, packing_refused

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)
PROMPTS = prompts_of_lengths(11, [1, 9, 30])


@pytest.fixture
def fresh_probe():
    """The probe's verdicts forgotten before and after: the test's own probe runs."""
    packing_refused.cache_clear()
    yield
    packing_refused.cache_clear()


def minillm_log(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "minillm"]


def layer_kinds(model: nn.Module) -> tuple[int, int]:
    """(PackedLinear, nn.Linear) modules in the model."""
    kinds = [type(m) for m in model.modules()]
    return kinds.count(PackedLinear), kinds.count(nn.Linear)


def x86_flags() -> set[str] | None:
    """The CPU's feature flags on x86 Linux, else None."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not cpuinfo.exists():
        return None
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


# --- the probe ------------------------------------------------------------------------------

@pytest.mark.skipif(x86_flags() is None, reason="reads the x86 feature flags of /proc/cpuinfo")
def test_the_probe_accepts_what_this_cpu_supports(fresh_probe):
    """torch's oneDNN runs float32 on every x86 CPU, bfloat16 with AVX-512 BW, VL and DQ or
    with AVX-NE-CONVERT: on an AVX-512 machine packing must stay on."""
    flags = x86_flags()
    assert packing_refused(torch.float32) is None
    bf16 = {"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags
    reason = packing_refused(torch.bfloat16)
    assert (reason is None) == bf16, reason


def test_a_probe_that_raises_refuses_with_one_log_line(fresh_probe, monkeypatch, caplog,
                                                       llama_checkpoint):
    def unsupported(self, x):
        raise RuntimeError("no oneDNN kernel for this CPU\nmore details")

    monkeypatch.setattr(PackedLinear, "forward", unsupported)
    model = load_model(llama_checkpoint, dtype="float32")
    with caplog.at_level(logging.INFO, logger="minillm"):
        assert not can_pack(model)
    assert minillm_log(caplog) == ["linear layers: nn.Linear, not oneDNN-packed: torch.float32 "
                                   "fails here (RuntimeError: no oneDNN kernel for this CPU)"]


@pytest.mark.parametrize("wrong", [lambda y: y * 1.001, lambda y: y + float("nan")],
                         ids=["off-by-0.1%", "nan"])
def test_a_probe_that_computes_wrong_values_refuses(fresh_probe, monkeypatch, caplog, wrong,
                                                    llama_checkpoint):
    packed_forward = PackedLinear.forward
    monkeypatch.setattr(PackedLinear, "forward", lambda self, x: wrong(packed_forward(self, x)))
    model = load_model(llama_checkpoint, dtype="float32")
    with caplog.at_level(logging.INFO, logger="minillm"):
        assert not can_pack(model)
    [line] = minillm_log(caplog)
    assert "torch.float32 gives wrong results here (relative error" in line


def test_the_disable_variable_keeps_nn_linear_with_one_log_line(monkeypatch, caplog,
                                                                 llama_checkpoint):
    monkeypatch.setenv("MINILLM_DISABLE_PACKING", "1")
    model = load_model(llama_checkpoint, dtype="float32")
    with caplog.at_level(logging.INFO, logger="minillm"):
        assert not can_pack(model)
    assert minillm_log(caplog) == [
        "linear layers: nn.Linear, not oneDNN-packed (MINILLM_DISABLE_PACKING=1)"]


# --- the engine -----------------------------------------------------------------------------

def generate(llm: LLM):
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    return [o.outputs[0] for o in outputs]


@torch.inference_mode()
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_engine_generates_in_each_dtype_packed_where_the_probe_accepts(llama_checkpoint,
                                                                           dtype):
    """The bfloat16 engine crashed on CPUs without AVX-512. Each prompt's first token must be
    one transformers (same dtype) ranks first, within bfloat16's rounding, with its logprob."""
    llm = LLM(str(llama_checkpoint), dtype=dtype)
    linears = 7 * llm.engine.model.config.num_layers + 1
    packed = packing_refused(getattr(torch, dtype)) is None
    assert layer_kinds(llm.engine.model) == ((linears, 0) if packed else (0, linears))
    reference = AutoModelForCausalLM.from_pretrained(llama_checkpoint,
                                                     dtype=getattr(torch, dtype)).eval()
    for prompt, completion in zip(PROMPTS, generate(llm)):
        assert len(completion.token_ids) == GREEDY.max_tokens
        first = completion.token_ids[0]
        expected = torch.log_softmax(reference(torch.tensor([prompt])).logits[0, -1].float(), -1)
        assert expected[first] >= expected.max() - 0.1, (prompt, first)
        assert completion.logprobs[0][first].logprob == pytest.approx(expected[first].item(),
                                                                      abs=0.1)


def test_with_both_switches_the_engine_falls_back_and_generates_the_same(llama_checkpoint,
                                                                         monkeypatch, caplog):
    """What `make test-fallback` runs every engine test under: nn.Linear and the torch backend,
    one log line each, the same greedy tokens as the engine's default path on this machine."""
    expected = [c.token_ids for c in generate(LLM(str(llama_checkpoint), dtype="float32"))]
    monkeypatch.setenv("MINILLM_DISABLE_PACKING", "1")
    monkeypatch.setenv("MINILLM_DISABLE_CPU_KERNEL", "1")
    with caplog.at_level(logging.INFO, logger="minillm"):
        llm = LLM(str(llama_checkpoint), dtype="float32")
    assert layer_kinds(llm.engine.model)[0] == 0
    assert llm.engine.backend.name == "torch"
    fallbacks = [line for line in minillm_log(caplog) if "MINILLM_DISABLE" in line]
    assert fallbacks == [
        "linear layers: nn.Linear, not oneDNN-packed (MINILLM_DISABLE_PACKING=1)",
        "attention: the torch backend, not the CPU kernel (MINILLM_DISABLE_CPU_KERNEL=1)"]
    assert [c.token_ids for c in generate(llm)] == expected
