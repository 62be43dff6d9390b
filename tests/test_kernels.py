"""The Triton kernels against an independent float64 reference, under the Triton interpreter.

Run with `TRITON_INTERPRET=1 pytest tests -m kernels` (what `make test-kernels` does); on a CUDA
machine the same tests run the compiled kernels. Every case draws fresh random inputs from its
own seed, lays each sequence's context into *shuffled* physical blocks, fills everything else
in the cache and the outputs with NaN (so a stray read or a missed write shows), and compares
with attention computed in float64 straight from the per-sequence K/V it generated: no cache,
no block tables, no Triton.
"""
from __future__ import annotations

import os
import zlib

import pytest
import torch
from attention_reference import causal_attention_float64

from minillm.attention.base import AttentionMetadata
from minillm_kernels import paged_decode_attention, paged_prefill_attention, store_kv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = [
    pytest.mark.kernels,
    pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                       reason="needs a CUDA GPU or TRITON_INTERPRET=1 (make test-kernels)"),
]

# Relative error bound: max |out - ref| / max |ref|.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2}


def seed_for(*params) -> int:
    """A per-case seed derived from the case's parameters: fixed per case, different across."""
    return zlib.crc32(repr(params).encode())


class Batch:
    """A random batch: contexts already cached (`prefix_lens`) plus new tokens (`query_lens`).

    Holds the ground truth (each sequence's full K/V and queries) and the paged layout: caches
    whose unused slots are NaN, shuffled block tables padded with 0, and slot mappings.
    """

    def __init__(self, prefix_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size,
                 dtype, seed, spare_blocks=3):
        gen = torch.Generator().manual_seed(seed)
        self.seq_lens = [p + q for p, q in zip(prefix_lens, query_lens)]
        self.query_lens = list(query_lens)
        self.num_heads, self.head_dim, self.dtype = num_heads, head_dim, dtype
        self.scale = head_dim ** -0.5

        def randn(*shape):
            return torch.randn(*shape, generator=gen).to(dtype)

        self.keys = [randn(n, num_kv_heads, head_dim) for n in self.seq_lens]
        self.values = [randn(n, num_kv_heads, head_dim) for n in self.seq_lens]
        self.q = randn(sum(query_lens), num_heads, head_dim).to(DEVICE)

        blocks_per_seq = [-(-n // block_size) for n in self.seq_lens]
        num_blocks = sum(blocks_per_seq) + spare_blocks
        physical = torch.randperm(num_blocks, generator=gen).tolist()
        width = max(blocks_per_seq) + 1  # one column of 0-padding at least
        self.block_tables = torch.zeros(len(self.seq_lens), width, dtype=torch.int32)
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.k_cache = torch.full(shape, float("nan"), dtype=dtype)
        self.v_cache = torch.full(shape, float("nan"), dtype=dtype)

        slots = []
        for i, (n, prefix) in enumerate(zip(self.seq_lens, prefix_lens)):
            blocks = [physical.pop() for _ in range(blocks_per_seq[i])]
            self.block_tables[i, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
            seq_slots = [blocks[p // block_size] * block_size + p % block_size for p in range(n)]
            flat_k = self.k_cache.view(-1, num_kv_heads, head_dim)
            flat_v = self.v_cache.view(-1, num_kv_heads, head_dim)
            flat_k[seq_slots[:prefix]] = self.keys[i][:prefix]   # the already-cached context
            flat_v[seq_slots[:prefix]] = self.values[i][:prefix]
            slots += seq_slots[prefix:]
        self.slot_mapping = torch.tensor(slots, dtype=torch.int64, device=DEVICE)
        self.new_k = torch.cat([k[p:] for k, p in zip(self.keys, prefix_lens)]).to(DEVICE)
        self.new_v = torch.cat([v[p:] for v, p in zip(self.values, prefix_lens)]).to(DEVICE)
        self.k_cache, self.v_cache = self.k_cache.to(DEVICE), self.v_cache.to(DEVICE)
        self.block_tables = self.block_tables.to(DEVICE)

    def metadata(self) -> AttentionMetadata:
        starts = torch.tensor([0] + self.query_lens).cumsum(0).to(torch.int32)
        return AttentionMetadata(
            slot_mapping=self.slot_mapping, query_start_loc=starts.to(DEVICE),
            seq_lens=torch.tensor(self.seq_lens, dtype=torch.int32, device=DEVICE),
            block_tables=self.block_tables, max_query_len=max(self.query_lens),
            max_seq_len=max(self.seq_lens))

    def poisoned_output(self) -> torch.Tensor:
        return torch.full_like(self.q, float("nan"))

    def reference(self) -> torch.Tensor:
        """Causal softmax attention in float64, one sequence at a time, from the ground truth."""
        return causal_attention_float64(self.q, self.keys, self.values, self.seq_lens,
                                        self.query_lens, self.scale)

    def check(self, out: torch.Tensor) -> None:
        assert out.dtype == self.dtype and out.shape == self.q.shape
        out = out.cpu().double()
        assert not out.isnan().any(), "some outputs were never written"
        ref = self.reference()
        error = ((out - ref).abs().max() / ref.abs().max()).item()
        assert error <= TOLERANCE[self.dtype], f"relative error {error:.2e}"


def store_new_tokens(batch: Batch) -> None:
    store_kv(batch.new_k, batch.new_v, batch.k_cache, batch.v_cache, batch.slot_mapping)


# ---------------------------------------------------------------------------------------------
# store

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_size", [16, 32])
def test_store_kv_writes_slots_and_skips_minus_one(dtype, block_size):
    gen = torch.Generator().manual_seed(seed_for("store", dtype, block_size))
    num_blocks, kv_heads, head_dim, num_tokens = 6, 2, 64, 40
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    # k and v as strided views into one fused QKV projection output, as a model produces them.
    qkv = torch.randn(num_tokens, 4 + 2 * kv_heads, head_dim, generator=gen).to(dtype)
    k, v = qkv[:, 4:4 + kv_heads], qkv[:, 4 + kv_heads:]
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    skipped = torch.rand(num_tokens, generator=gen) < 0.25
    slots[skipped] = -1
    k_before, v_before = k_cache.clone(), v_cache.clone()

    k_cache, v_cache = k_cache.to(DEVICE), v_cache.to(DEVICE)
    store_kv(k.to(DEVICE), v.to(DEVICE), k_cache, v_cache, slots.to(DEVICE))

    expected_k = k_before.view(-1, kv_heads, head_dim).clone()
    expected_v = v_before.view(-1, kv_heads, head_dim).clone()
    expected_k[slots[~skipped]] = k[~skipped]
    expected_v[slots[~skipped]] = v[~skipped]
    assert torch.equal(k_cache.cpu().view(-1, kv_heads, head_dim), expected_k)
    assert torch.equal(v_cache.cpu().view(-1, kv_heads, head_dim), expected_v)


# ---------------------------------------------------------------------------------------------
# decode: ragged lengths, GQA ratios 1/2/4/8, one and several splits

# The 130-token context gets real splits: partitions are whole tiles (64 or 32 tokens), so
# 2 splits cut it 128 + 2 and 3 splits 64 + 64 + 2; the short ones only fill their first split.
RAGGED = [1, 15, 16, 17, 130]

DECODE_CASES = [
    # (num_heads, num_kv_heads, head_dim, block_size, dtype, num_splits)
    (4, 4, 64, 16, torch.float32, 1),
    (4, 4, 32, 32, torch.float16, 2),
    (8, 4, 64, 32, torch.float32, 2),
    (8, 4, 16, 16, torch.float16, 1),
    (8, 2, 128, 16, torch.float32, 4),   # float32 dim 128 walks 32-token tiles
    (8, 2, 64, 16, torch.float16, 1),
    (8, 1, 32, 32, torch.float32, 1),
    (16, 2, 256, 16, torch.float16, 3),
    (32, 1, 64, 16, torch.float32, 2),   # group of 32 heads: two 16-row slices per KV head
]


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype,num_splits",
                         DECODE_CASES)
def test_paged_decode(num_heads, num_kv_heads, head_dim, block_size, dtype, num_splits):
    case = (num_heads, num_kv_heads, head_dim, block_size, dtype, num_splits)
    batch = Batch([n - 1 for n in RAGGED], [1] * len(RAGGED), num_heads, num_kv_heads,
                  head_dim, block_size, dtype, seed_for("decode", *case))
    store_new_tokens(batch)
    out = paged_decode_attention(batch.q, batch.k_cache, batch.v_cache, batch.block_tables,
                                 batch.metadata().seq_lens, batch.scale, max(batch.seq_lens),
                                 num_splits, out=batch.poisoned_output())
    batch.check(out)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_paged_decode_several_hundred_tokens(num_splits):
    """A long context next to short ones: 3 splits of 128 tokens for the 300-token sequence,
    while the 1-token sequence has work for its first split only."""
    lens = [1, 17, 300]
    batch = Batch([n - 1 for n in lens], [1] * len(lens), 8, 2, 128, 16, torch.float16,
                  seed_for("decode-long", num_splits))
    store_new_tokens(batch)
    out = paged_decode_attention(batch.q, batch.k_cache, batch.v_cache, batch.block_tables,
                                 batch.metadata().seq_lens, batch.scale, 300, num_splits,
                                 out=batch.poisoned_output())
    batch.check(out)


# ---------------------------------------------------------------------------------------------
# prefill: whole prompts, chunks over a cached prefix, mixed with decode tokens

PREFILL_CASES = [
    # (prefix_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype)
    ([0, 0, 0, 0], [1, 15, 16, 17], 4, 4, 64, 16, torch.float32),          # plain prompts
    ([16, 17, 40, 5], [16, 5, 33, 1], 8, 4, 32, 32, torch.float16),        # chunks after a prefix
    ([0, 39, 0, 15], [17, 1, 70, 1], 8, 2, 64, 16, torch.float32),         # mixed with decodes
    ([31, 0, 16], [2, 16, 65], 8, 1, 128, 16, torch.float16),              # GQA 8
    ([7, 20], [9, 12], 4, 2, 256, 32, torch.float32),                      # dim 256 float32
    ([3, 0], [14, 18], 2, 2, 16, 16, torch.float16),                       # dim 16
]


@pytest.mark.parametrize("prefix_lens,query_lens,num_heads,num_kv_heads,head_dim,block_size,dtype",
                         PREFILL_CASES)
def test_paged_prefill(prefix_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size,
                       dtype):
    case = (prefix_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype)
    batch = Batch(prefix_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype,
                  seed_for("prefill", *case))
    meta = batch.metadata()
    store_new_tokens(batch)
    out = paged_prefill_attention(batch.q, batch.k_cache, batch.v_cache, meta.query_start_loc,
                                  meta.seq_lens, meta.block_tables, meta.max_query_len,
                                  batch.scale, out=batch.poisoned_output())
    batch.check(out)


def test_paged_prefill_several_hundred_tokens():
    """A 300-token prompt in one chunk, and a 150-token chunk after a 160-token cached prefix."""
    batch = Batch([0, 160], [300, 150], 4, 2, 64, 16, torch.float16, seed_for("prefill-long"))
    meta = batch.metadata()
    store_new_tokens(batch)
    out = paged_prefill_attention(batch.q, batch.k_cache, batch.v_cache, meta.query_start_loc,
                                  meta.seq_lens, meta.block_tables, meta.max_query_len,
                                  batch.scale, out=batch.poisoned_output())
    batch.check(out)


# ---------------------------------------------------------------------------------------------
# the backend: dispatch, store + attend in one forward, agreement with the torch backend

@pytest.mark.parametrize("decode_only", [True, False])
@pytest.mark.parametrize("num_kv_splits", [None, 2])
def test_triton_backend_matches_reference_and_torch_backend(decode_only, num_kv_splits):
    from minillm.attention import get_backend
    from minillm.attention.triton_backend import TritonAttentionBackend

    lens = [1, 15, 16, 17, 130]
    queries = [1] * len(lens) if decode_only else [1, 15, 3, 1, 64]
    batch = Batch([n - q for n, q in zip(lens, queries)], queries, 8, 2, 64, 16, torch.float32,
                  seed_for("backend", decode_only, num_kv_splits))
    meta = batch.metadata()
    # The torch backend reads whole blocks and masks scores, so it needs finite padding slots.
    torch_caches = batch.k_cache.nan_to_num(0), batch.v_cache.nan_to_num(0)

    out = TritonAttentionBackend(num_kv_splits).forward(
        batch.q, batch.new_k, batch.new_v, batch.k_cache, batch.v_cache, meta, batch.scale)
    batch.check(out)

    expected = get_backend("torch").forward(batch.q, batch.new_k, batch.new_v, *torch_caches,
                                            meta, batch.scale)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # Both stored the same tokens in the same slots.
    assert torch.equal(batch.k_cache.nan_to_num(0), torch_caches[0])
    assert torch.equal(batch.v_cache.nan_to_num(0), torch_caches[1])
