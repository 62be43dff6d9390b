"""On an NVIDIA GPU: the engine and the compiled Triton kernels against independent references.

Skipped without a GPU (this course's CI has none); `tools/gpu_acceptance.sh` runs them where one
is lent (`pytest -m "cuda or kernels"`: the `kernels` tests run compiled on a GPU too). They
reuse the CPU suites' helpers, with the device set to `cuda`:

* the engine on `cuda`, with the torch and the Triton attention backends, generates exactly
  transformers' greedy tokens, each token's logprob within 1e-4, under every scheduling setting
  of test_engine (transformers runs on the CPU in float32: the independent reference);
* every decode and prefill case of test_kernels in bfloat16 (test_kernels itself covers float32
  and float16), against the float64 reference.
"""
from __future__ import annotations

import pytest
import torch
from checkpoints import VOCAB_SIZE
from test_engine import (NEW_TOKENS, SETTINGS, assert_no_leaks, random_prompts,
                         transformers_greedy_logprobs)
from test_kernels import (DECODE_CASES, PREFILL_CASES, RAGGED, Batch, seed_for,
                          store_new_tokens)

from minillm import LLM, SamplingParams
from minillm_kernels import paged_decode_attention, paged_prefill_attention

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs an NVIDIA GPU (tools/gpu_acceptance.sh runs these)"),
]

# bfloat16 keeps 8 bits of mantissa (float16: 11, tolerance 1e-2 in test_kernels): each stored
# probability and the output carry ~0.4 % rounding. A wrong kernel misses by O(1).
BF16_TOLERANCE = 3e-2


# ---------------------------------------------------------------------------------------------
# the engine on cuda

@pytest.fixture(scope="module")
def reference(checkpoint):
    prompts = random_prompts(16, 0, VOCAB_SIZE)
    return prompts, transformers_greedy_logprobs(checkpoint, prompts)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_engine_on_cuda_matches_transformers(checkpoint, reference, setting, backend):
    prompts, expected = reference
    llm = LLM(str(checkpoint), device="cuda", dtype="float32", attention_backend=backend,
              **SETTINGS[setting])
    assert llm.engine.device.type == "cuda" and llm.engine.backend.name == backend
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=0)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert_no_leaks(llm)
    for prompt, out, (tokens, logprobs) in zip(prompts, outputs, expected):
        completion = out.outputs[0]
        assert completion.token_ids == tokens, f"prompt of {len(prompt)} tokens"
        got = [entry[t].logprob for entry, t in zip(completion.logprobs, tokens)]
        assert got == pytest.approx(logprobs, abs=1e-4), f"prompt of {len(prompt)} tokens"
    if setting.startswith("preempt"):
        assert llm.engine.stats.num_preemptions > 0


def test_auto_picks_cuda_and_triton(llama_checkpoint):
    engine = LLM(str(llama_checkpoint)).engine
    assert engine.device.type == "cuda" and engine.backend.name == "triton"


# ---------------------------------------------------------------------------------------------
# the compiled kernels in bfloat16 (test_kernels' cases, its Batch and its float64 reference)

def assert_close_to_reference(batch, out: torch.Tensor) -> None:
    assert out.is_cuda and out.dtype == torch.bfloat16 and out.shape == batch.q.shape
    out = out.cpu().double()
    assert not out.isnan().any(), "some outputs were never written"
    ref = batch.reference()
    error = ((out - ref).abs().max() / ref.abs().max()).item()
    assert error <= BF16_TOLERANCE, f"relative error {error:.2e}"


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,num_splits",
                         [case[:4] + case[5:] for case in DECODE_CASES])  # the dtype left out
def test_paged_decode_bfloat16(num_heads, num_kv_heads, head_dim, block_size, num_splits):
    case = (num_heads, num_kv_heads, head_dim, block_size, num_splits)
    batch = Batch([n - 1 for n in RAGGED], [1] * len(RAGGED), num_heads, num_kv_heads,
                  head_dim, block_size, torch.bfloat16, seed_for("decode-bf16", *case))
    store_new_tokens(batch)
    out = paged_decode_attention(batch.q, batch.k_cache, batch.v_cache, batch.block_tables,
                                 batch.metadata().seq_lens, batch.scale, max(batch.seq_lens),
                                 num_splits, out=batch.poisoned_output())
    assert_close_to_reference(batch, out)


@pytest.mark.parametrize("prefix_lens,query_lens,num_heads,num_kv_heads,head_dim,block_size",
                         [case[:6] for case in PREFILL_CASES])
def test_paged_prefill_bfloat16(prefix_lens, query_lens, num_heads, num_kv_heads, head_dim,
                                block_size):
    case = (prefix_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size)
    batch = Batch(prefix_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size,
                  torch.bfloat16, seed_for("prefill-bf16", *case))
    meta = batch.metadata()
    store_new_tokens(batch)
    out = paged_prefill_attention(batch.q, batch.k_cache, batch.v_cache, meta.query_start_loc,
                                  meta.seq_lens, meta.block_tables, meta.max_query_len,
                                  batch.scale, out=batch.poisoned_output())
    assert_close_to_reference(batch, out)
