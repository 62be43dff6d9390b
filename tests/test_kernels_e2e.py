"""The engine on the Triton backend (interpreted on CPU) generates exactly what the torch backend
generates: same greedy tokens through chunked prefill, prefix-cache hits and mixed batches."""
from __future__ import annotations

import os

import pytest
import torch
from checkpoints import prompts_of_lengths

from minillm import LLM, SamplingParams

pytestmark = [
    pytest.mark.kernels,
    pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                       reason="needs a CUDA GPU or TRITON_INTERPRET=1 (make test-kernels)"),
]

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def greedy(llm: LLM, batch: list[list[int]]) -> list[list[int]]:
    outputs = llm.generate([{"prompt_token_ids": p} for p in batch], GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


def test_triton_backend_generates_what_torch_generates(gqa_model_path):
    """Chunks of 13 tokens: prompts are prefilled in pieces over their own cached chunks, in
    mixed batches with other sequences' decodes; block size 32 (the prefix test uses 16)."""
    batch = prompts_of_lengths(1, [1, 15, 16, 17, 70])
    settings = dict(max_num_batched_tokens=13, block_size=32)
    expected = greedy(LLM(gqa_model_path, attention_backend="torch", **settings), batch)
    assert greedy(LLM(gqa_model_path, attention_backend="triton", **settings), batch) == expected


def test_triton_backend_with_prefix_cache_hits(gqa_model_path):
    shared = prompts_of_lengths(2, [40])[0]  # 40 tokens: two full 16-token blocks to reuse
    batch = prompts_of_lengths(3, [3, 20, 9], prefix=shared)
    reference = LLM(gqa_model_path, attention_backend="torch")
    expected = greedy(reference, batch[:1]) + greedy(reference, batch[1:])

    llm = LLM(gqa_model_path, attention_backend="triton", max_num_batched_tokens=16)
    assert greedy(llm, batch[:1]) == expected[:1]   # fills the cache
    assert greedy(llm, batch[1:]) == expected[1:]   # hits it, prefills only the tails (chunked)
    assert llm.engine.stats.prefix_cache_hits >= 2 * 32
