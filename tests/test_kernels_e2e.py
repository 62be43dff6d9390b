"""The engine on the Triton backend (interpreted on CPU) generates exactly what the torch backend
generates: same greedy tokens through chunked prefill, prefix-cache hits and mixed batches."""
from __future__ import annotations

import os

import pytest
import torch
from checkpoints import make_checkpoint

from minillm import LLM, SamplingParams

pytestmark = [
    pytest.mark.kernels,
    pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                       reason="needs a CUDA GPU or TRITON_INTERPRET=1 (make test-kernels)"),
]

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
VOCAB = 384


@pytest.fixture(scope="module", params=["llama-gqa-llama3", "qwen3-gqa-headdim"])
def model_path(request, tmp_path_factory) -> str:
    """GQA 2 with head dim 16, and GQA 4 with head dim 32 (one KV head)."""
    return str(make_checkpoint(tmp_path_factory.mktemp(request.param), request.param))


def prompts(seed: int, lengths: list[int], prefix: list[int] = ()) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [list(prefix) + torch.randint(0, VOCAB, (n,), generator=gen).tolist()
            for n in lengths]


def greedy(llm: LLM, batch: list[list[int]]) -> list[list[int]]:
    outputs = llm.generate([{"prompt_token_ids": p} for p in batch], GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


def test_triton_backend_generates_what_torch_generates(model_path):
    """Chunks of 13 tokens: prompts are prefilled in pieces over their own cached chunks, in
    mixed batches with other sequences' decodes; block size 32 (the prefix test uses 16)."""
    batch = prompts(1, [1, 15, 16, 17, 70])
    settings = dict(max_num_batched_tokens=13, block_size=32)
    expected = greedy(LLM(model_path, attention_backend="torch", **settings), batch)
    assert greedy(LLM(model_path, attention_backend="triton", **settings), batch) == expected


def test_triton_backend_with_prefix_cache_hits(model_path):
    shared = prompts(2, [40])[0]  # 40 tokens: two full 16-token blocks to reuse
    batch = prompts(3, [3, 20, 9], prefix=shared)
    reference = LLM(model_path, attention_backend="torch")
    expected = greedy(reference, batch[:1]) + greedy(reference, batch[1:])

    llm = LLM(model_path, attention_backend="triton", max_num_batched_tokens=16)
    assert greedy(llm, batch[:1]) == expected[:1]   # fills the cache
    assert greedy(llm, batch[1:]) == expected[1:]   # hits it, prefills only the tails (chunked)
    assert llm.engine.stats.prefix_cache_hits >= 2 * 32
