"""Paged prefill attention: query chunks of any length, causal over cache + themselves.

This one kernel serves every step that is not pure decode:

* a whole prompt (nothing cached before it),
* a chunk of a long prompt under chunked prefill (earlier chunks are already in the cache),
* the uncached tail of a prompt after a prefix-cache hit,
* a mixed batch, where some sequences bring one decode token and others a prefill chunk.

In every case the new tokens' K/V were stored first, so the whole context, old and new, is read
the same way: through the block table. Sequence `s` has `q_len` queries, the last `q_len`
positions of its `seq_len`-token context, so query row `r` sits at position
`prefix_len + r` with `prefix_len = seq_len - q_len`, and may see keys at positions `<=` its own.

Tiling (FlashAttention-style): one program = one sequence x one block of `BLOCK_M` query rows x
one query head. It walks the context in tiles of `BLOCK_N` keys, from position 0 up to the last
position its queries may see, keeping an online softmax per row. Programs whose query block lies
past the end of a short sequence's chunk return at once: the grid is sized for the longest chunk
(`cdiv(max_query_len, BLOCK_M)`), which needs no host-side bookkeeping per sequence.

Grid: `(num_seqs, cdiv(max_query_len, BLOCK_M), num_heads)`.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from minillm_kernels.attention_parts import load_kv_tile, online_softmax_update
from minillm_kernels.common import aligned, check_aligned, dot_precision


# Arguments whose value or alignment varies from launch to launch are not specialised on, so one
# compiled binary per (head dim, dtype) serves every launch (see variants.py).
@triton.jit(do_not_specialize=["query_start_loc_ptr", "seq_lens_ptr", "block_tables_ptr",
                               "block_size", "group_size", "stride_bt_seq"])
def paged_prefill_kernel(
    q_ptr,                         # [num_tokens, num_heads, head_dim]
    k_cache_ptr, v_cache_ptr,      # [num_blocks, block_size, num_kv_heads, head_dim]
    out_ptr,                       # [num_tokens, num_heads, head_dim]
    query_start_loc_ptr,           # [num_seqs + 1] int32
    seq_lens_ptr,                  # [num_seqs] int32
    block_tables_ptr,              # [num_seqs, max_blocks] int32
    scale_log2e,                   # softmax scale * log2(e): scores go straight into exp2
    block_size, group_size,
    stride_q_tok, stride_q_head,
    stride_o_tok, stride_o_head,
    stride_c_block, stride_c_slot, stride_c_head,
    stride_bt_seq,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,         # query rows per program
    BLOCK_N: tl.constexpr,         # keys per loop iteration (may span several cache blocks)
    DOT_PRECISION: tl.constexpr,   # "ieee" keeps float32 caches exact (no TF32 rounding)
):
    """One program = one sequence x one block of BLOCK_M queries x one query head."""
    seq = tl.program_id(0)
    q_block = tl.program_id(1)
    head = tl.program_id(2)

    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if q_block * BLOCK_M >= q_len:
        return  # this sequence's chunk is shorter than the longest one in the batch
    seq_len = tl.load(seq_lens_ptr + seq)
    prefix_len = seq_len - q_len            # tokens cached before this step
    kv_head = head // group_size            # GQA: query heads share KV heads in groups

    rows = q_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = rows < q_len
    q_pos = prefix_len + rows               # each query's position in its sequence
    dims = tl.arange(0, HEAD_DIM)
    tokens = (q_start + rows).to(tl.int64)  # rows of q/out in the flattened batch
    q = tl.load(q_ptr + tokens[:, None] * stride_q_tok + head * stride_q_head + dims[None, :],
                mask=row_valid[:, None], other=0.0)

    # Online softmax state per row, as in the decode kernel: running max, running sum, output.
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Causality bounds the walk: nothing after the block's last query is ever visible.
    kv_end = tl.minimum(seq_len, prefix_len + (q_block + 1) * BLOCK_M)
    block_table = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    for tile_start in range(0, kv_end, BLOCK_N):
        pos = tile_start + tl.arange(0, BLOCK_N)
        in_range = pos < kv_end
        k, v = load_kv_tile(k_cache_ptr, v_cache_ptr, block_table, pos, in_range, dims,
                            block_size, stride_c_block, stride_c_slot, kv_head * stride_c_head)

        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2e
        visible = (pos[None, :] <= q_pos[:, None]) & in_range[None, :]
        scores = tl.where(visible, scores, float("-inf"))
        # Position 0 is visible to every row (padding rows included), so each row's max is
        # finite after the first tile.
        m_i, l_i, acc = online_softmax_update(m_i, l_i, acc, scores, v, DOT_PRECISION)

    out = acc / l_i[:, None]
    tl.store(out_ptr + tokens[:, None] * stride_o_tok + head * stride_o_head + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None])


def prefill_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps), chosen so no compiled variant spills registers.

    The q tile and the float32 accumulator (BLOCK_M x head_dim each) live in registers for the
    whole loop, so tiles shrink as rows grow. float32 inputs multiply on the FMA units (IEEE
    precision, no tensor cores), which need more registers per product: 8 warps share them.
    """
    row_bytes = head_dim * dtype.itemsize
    num_warps = 4 if dtype != torch.float32 and row_bytes <= 256 else 8
    block_m = 64 if row_bytes <= 256 else 32 if row_bytes <= 512 else 16
    block_n = 64 if row_bytes <= 128 else 32 if row_bytes <= 512 else 16
    return block_m, block_n, num_warps


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                            block_tables: torch.Tensor, max_query_len: int, scale: float,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of query chunks (`q`: [num_tokens, num_heads, head_dim]) over the cache.

    The chunks' own K/V must already be in the cache. Returns (or fills `out`) in q's dtype.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group_size = num_heads // num_kv_heads
    assert num_heads == group_size * num_kv_heads, "num_heads must be a multiple of num_kv_heads"
    assert q.dtype == k_cache.dtype == v_cache.dtype, "q and the caches must share a dtype"
    assert query_start_loc.dtype == seq_lens.dtype == block_tables.dtype == torch.int32
    q = aligned(q)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if t is not None:
            check_aligned(name, t)
    assert k_cache.stride() == v_cache.stride(), "the K and V caches must share strides"
    if out is None:
        out = torch.empty_like(q)
    num_seqs = seq_lens.numel()
    if num_tokens == 0 or num_seqs == 0:
        return out

    block_m, block_n, num_warps = prefill_config(head_dim, q.dtype)
    grid = (num_seqs, triton.cdiv(max_query_len, block_m), num_heads)
    paged_prefill_kernel[grid](
        q, k_cache, v_cache, out, query_start_loc, seq_lens, block_tables,
        scale * math.log2(math.e),
        k_cache.shape[1], group_size,
        q.stride(0), q.stride(1),
        out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_PRECISION=dot_precision(q.dtype), num_warps=num_warps, enable_fp_fusion=True,
    )
    return out
