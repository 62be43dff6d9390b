"""Store kernel: write this step's new keys and values into the paged KV cache.

The cache of one layer is `[num_blocks, block_size, num_kv_heads, head_dim]`. A token's *slot*
is `block_id * block_size + offset`: the engine's block manager chose it, and the block table
records which physical block holds which part of each sequence. A slot of -1 means "do not
store" (for example a token whose K/V a prefix-cache hit already holds).

Tiling: one program per (block of BLOCK_T tokens, kv head). Its tile is BLOCK_T rows of
`head_dim` values: each row is one token's K (or V) for that head, contiguous in memory, so a row
is one coalesced vector load and one store. Rows whose slot is -1 (or past the last token) are
masked off.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from minillm_kernels.common import aligned, check_aligned

# Tokens per program.
BLOCK_T = 16


# Arguments whose value or alignment varies from launch to launch are not specialised on, so one
# compiled binary per (head dim, dtype) serves every launch (see variants.py).
@triton.jit(do_not_specialize=["slot_mapping_ptr", "num_tokens", "block_size"])
def store_kv_kernel(
    k_ptr, v_ptr,                      # [num_tokens, num_kv_heads, head_dim]
    k_cache_ptr, v_cache_ptr,          # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping_ptr,                  # [num_tokens] int64, -1 = skip
    num_tokens, block_size,
    stride_k_tok, stride_k_head,       # strides of k (v shares them: checked on the host)
    stride_c_block, stride_c_slot, stride_c_head,  # strides of the caches (k and v alike)
    HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    head = tl.program_id(1)

    # int64 slots: a large cache has more than 2**31 of them.
    slots = tl.load(slot_mapping_ptr + tokens, mask=tokens < num_tokens, other=-1)
    keep = (slots >= 0)[:, None]
    block = slots // block_size
    offset = slots % block_size
    dims = tl.arange(0, HEAD_DIM)

    # Source and destination addresses in int64: `block * stride_c_block` overflows int32 once a
    # cache holds more than 2**31 elements, which a real GPU cache easily does.
    src = tokens.to(tl.int64)[:, None] * stride_k_tok + head * stride_k_head + dims[None, :]
    dst = (block * stride_c_block + offset * stride_c_slot + head * stride_c_head)[:, None] \
        + dims[None, :]
    tl.store(k_cache_ptr + dst, tl.load(k_ptr + src, mask=keep), mask=keep)
    tl.store(v_cache_ptr + dst, tl.load(v_ptr + src, mask=keep), mask=keep)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write `k`, `v` ([num_tokens, num_kv_heads, head_dim]) into the caches at `slot_mapping`.

    `k` and `v` may be strided views (for example into a fused QKV projection's output); the
    caches must be laid out as `check_aligned` requires.
    """
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    k, v = aligned(k), aligned(v)
    if k.stride() != v.stride():  # the kernel takes one set of strides for both
        k, v = k.contiguous(), v.contiguous()
    check_aligned("k_cache", k_cache)
    check_aligned("v_cache", v_cache)
    assert v.shape == k.shape and k_cache.shape == v_cache.shape
    assert k_cache.stride() == v_cache.stride(), "the K and V caches must share strides"
    assert k.dtype == v.dtype == k_cache.dtype == v_cache.dtype, "k/v and caches must share a dtype"
    assert slot_mapping.dtype == torch.int64 and slot_mapping.numel() == num_tokens
    # enable_fp_fusion (a*b+c as one FMA) is Triton's default, spelled out in every launch
    # because Triton 3.9 warns when it is left implicit.
    store_kv_kernel[(triton.cdiv(num_tokens, BLOCK_T), num_kv_heads)](
        k, v, k_cache, v_cache, slot_mapping,
        num_tokens, k_cache.shape[1],
        k.stride(0), k.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        HEAD_DIM=head_dim, BLOCK_T=BLOCK_T, enable_fp_fusion=True,
    )
