"""Paged decode attention: one new query token per sequence, read through the block tables.

Decode is memory-bound: each step reads every cached key and value of every sequence once and
does little arithmetic with them. The kernel's job is to keep enough loads in flight to saturate
memory bandwidth. Two ideas get it there.

**Split-KV (a.k.a. flash-decoding).** With one query per sequence, a grid of
`num_seqs x num_kv_heads` programs is too small to fill a GPU when a few sequences are long
(4 sequences x 8 KV heads = 32 programs on a 132-SM H100). So the context of each sequence is
cut into `num_splits` partitions of `partition_size` tokens, and each partition gets its own
program (stage 1). Each program returns a partial result: its softmax-weighted average of V over
its partition, plus the log-sum-exp (LSE) of its scores. Stage 2 merges the partials of one
(sequence, head): the partial with LSE `l_p` gets weight `exp(l_p - LSE_total)`. That is exact,
not an approximation: softmax over a union of disjoint sets is a weighted mix of the softmaxes
over the parts.

**GQA packing.** With grouped-query attention, `group_size = num_heads // num_kv_heads` query
heads share one KV head. One program handles all of them at once: the group's query vectors are
the rows of a `[GROUP_ROWS, head_dim]` tile, so one K tile loaded from memory serves the whole
group through a single `tl.dot`. `tl.dot` needs every dimension >= 16, so the group is padded to
`GROUP_ROWS = 16` rows (padding rows hold zeros and are never stored). A group of more than 16
heads is cut into 16-row slices, one program each.

With a single split there is nothing to merge: stage 1 then writes the final output itself and
stage 2 is not launched (one launch fewer per layer, which matters for small batches).

Grid of stage 1: `(num_seqs, num_kv_heads * slices_per_kv_head, num_splits)`.
Grid of stage 2: `(num_seqs, num_heads)`.

The kernels are assembled from small jit functions in `attention_parts.py`: `load_kv_tile`
(block-table addressing), `gqa_tile_heads` (GQA packing), `online_softmax_update` and
`merge_partial` (the split merge). Lab 5 has a learner write each of them.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from minillm_kernels.attention_parts import (gqa_tile_heads, load_kv_tile, merge_partial,
                                             online_softmax_update)
from minillm_kernels.common import aligned, check_aligned, dot_precision

# Query rows of one stage-1 program: the padded GQA group (tl.dot needs M >= 16).
GROUP_ROWS = 16
# Shortest partition worth a program of its own: below this the merge costs more than it saves.
MIN_PARTITION_TOKENS = 256
# Most partitions per sequence: the merge walks them one after another.
MAX_SPLITS = 32
# Programs per SM the split heuristic aims for (see choose_num_splits).
PROGRAMS_PER_SM = 4


# Arguments whose value or alignment varies from launch to launch are not specialised on, so one
# compiled binary per (head dim, dtype) serves every launch (see variants.py).
@triton.jit(do_not_specialize=["block_tables_ptr", "seq_lens_ptr", "block_size", "group_size",
                               "num_heads", "num_splits", "partition_size", "stride_bt_seq"])
def paged_decode_split_kernel(
    q_ptr,                         # [num_seqs, num_heads, head_dim]
    k_cache_ptr, v_cache_ptr,      # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables_ptr,              # [num_seqs, max_blocks] int32
    seq_lens_ptr,                  # [num_seqs] int32
    out_ptr,                       # [num_seqs, num_heads, head_dim]: written if num_splits == 1
    part_out_ptr,                  # [num_seqs, num_heads, num_splits, head_dim] float32
    part_lse_ptr,                  # [num_seqs, num_heads, num_splits] float32, log2 domain
    scale_log2e,                   # softmax scale * log2(e): scores go straight into exp2
    block_size, group_size, num_heads, num_splits, partition_size,
    stride_q_tok, stride_q_head,
    stride_o_tok, stride_o_head,
    stride_c_block, stride_c_slot, stride_c_head,
    stride_bt_seq,
    HEAD_DIM: tl.constexpr,
    GROUP_ROWS: tl.constexpr,
    TILE_N: tl.constexpr,          # context tokens per loop iteration (may span several blocks)
    DOT_PRECISION: tl.constexpr,   # "ieee" keeps float32 caches exact (no TF32 rounding)
):
    """Stage 1: one program = one sequence x one (slice of a) GQA group x one partition."""
    seq = tl.program_id(0)
    slice_id = tl.program_id(1)
    split = tl.program_id(2)

    seq_len = tl.load(seq_lens_ptr + seq)
    start = split * partition_size
    if start >= seq_len:
        return  # a short sequence has fewer partitions than the launch: nothing to do here
    end = tl.minimum(start + partition_size, seq_len)

    # Rows of the tile = query heads of this GQA group; rows past the group are padding.
    kv_head, heads, row_in_group = gqa_tile_heads(slice_id, group_size, GROUP_ROWS)
    dims = tl.arange(0, HEAD_DIM)
    q_offsets = seq.to(tl.int64) * stride_q_tok + heads[:, None] * stride_q_head + dims[None, :]
    q = tl.load(q_ptr + q_offsets, mask=row_in_group[:, None], other=0.0)

    # Online softmax state per row: running max `m_i` of the scores (log2 units), running sum
    # `l_i` of exp2(score - m_i), and the un-normalised output `acc`, all float32 whatever the
    # cache dtype.
    m_i = tl.full([GROUP_ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP_ROWS], dtype=tl.float32)
    acc = tl.zeros([GROUP_ROWS, HEAD_DIM], dtype=tl.float32)

    block_table = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    for tile_start in range(start, end, TILE_N):
        pos = tile_start + tl.arange(0, TILE_N)       # logical positions in the sequence
        in_range = pos < end                           # the last tile may be partial
        k, v = load_kv_tile(k_cache_ptr, v_cache_ptr, block_table, pos, in_range, dims,
                            block_size, stride_c_block, stride_c_slot, kv_head * stride_c_head)

        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2e
        scores = tl.where(in_range[None, :], scores, float("-inf"))
        # The first tile of a partition always holds a real token: each row's max is finite.
        m_i, l_i, acc = online_softmax_update(m_i, l_i, acc, scores, v, DOT_PRECISION)

    out = acc / l_i[:, None]
    if num_splits == 1:
        # The only partition: this is the final output.
        out_offsets = (seq.to(tl.int64) * stride_o_tok + heads[:, None] * stride_o_head
                       + dims[None, :])
        tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty),
                 mask=row_in_group[:, None])
    else:
        # A partial result: the partition's normalised output and its log2-sum-exp2.
        part = (seq.to(tl.int64) * num_heads + heads) * num_splits + split
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + dims[None, :], out,
                 mask=row_in_group[:, None])
        tl.store(part_lse_ptr + part, m_i + tl.log2(l_i), mask=row_in_group)


@triton.jit(do_not_specialize=["seq_lens_ptr", "num_heads", "num_splits", "partition_size"])
def merge_splits_kernel(
    out_ptr,                       # [num_seqs, num_heads, head_dim]
    part_out_ptr, part_lse_ptr,    # stage 1's partials (see above)
    seq_lens_ptr,
    num_heads, num_splits, partition_size,
    stride_o_tok, stride_o_head,
    HEAD_DIM: tl.constexpr,
):
    """Stage 2: one program = one (sequence, query head); merges its partitions by LSE."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    num_parts = tl.cdiv(seq_len, partition_size)   # partitions stage 1 actually wrote
    dims = tl.arange(0, HEAD_DIM)
    first = (seq.to(tl.int64) * num_heads + head) * num_splits

    # A running merge, like the online softmax one level up: keep the largest LSE seen so far and
    # rescale the sum of weights and the weighted output whenever it grows.
    lse_max = float("-inf")
    weight_sum = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for p in range(0, num_parts):
        lse = tl.load(part_lse_ptr + first + p)
        part_out = tl.load(part_out_ptr + (first + p) * HEAD_DIM + dims)
        lse_max, weight_sum, acc = merge_partial(lse_max, weight_sum, acc, lse, part_out)

    out_offsets = seq.to(tl.int64) * stride_o_tok + head * stride_o_head + dims
    tl.store(out_ptr + out_offsets, (acc / weight_sum).to(out_ptr.dtype.element_ty))


def decode_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """(TILE_N, num_warps) for stage 1, chosen so no compiled variant spills registers.

    A K and a V tile of TILE_N rows are in flight per iteration; with rows of more than 256
    bytes (float32 dim 128, 16-bit dim 256) the tile is halved. float32 inputs multiply on the
    FMA units (IEEE precision, no tensor cores), which need more registers: 8 warps share them.
    """
    row_bytes = head_dim * dtype.itemsize
    tile_n = 64 if row_bytes <= 256 else 32
    num_warps = 4 if dtype != torch.float32 and row_bytes <= 256 else 8
    return tile_n, num_warps


def choose_num_splits(num_seqs: int, num_kv_heads: int, group_size: int, max_seq_len: int,
                      num_sms: int) -> int:
    """How many partitions to cut each context into.

    Aim for at least PROGRAMS_PER_SM programs per SM: an SM runs 2-3 of these programs at once
    (registers allow no more), and having several "waves" of them keeps the last, partly empty
    wave short. But never make a partition shorter than MIN_PARTITION_TOKENS: each split costs a
    partial write and a share of the merge. Examples on an H100 (132 SMs), 8 KV heads, GQA 4:
    batch 64 = 512 programs gets 2 splits; batch 4 at 4k tokens gets 16 splits (cap MAX_SPLITS);
    batch 4 at 300 tokens gets 2 (partitions of at least 256 tokens).
    """
    programs = num_seqs * num_kv_heads * math.ceil(group_size / GROUP_ROWS)
    wanted = math.ceil(PROGRAMS_PER_SM * num_sms / programs)
    longest_allowed = math.ceil(max_seq_len / MIN_PARTITION_TOKENS)
    return max(1, min(wanted, longest_allowed, MAX_SPLITS))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                           max_seq_len: int, num_splits: int,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query per sequence (`q`: [num_seqs, num_heads, head_dim]).

    `seq_lens[i]` counts the context of sequence i including the query's own token (already
    stored in the cache). Returns (or fills `out`) [num_seqs, num_heads, head_dim] in q's dtype.
    """
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group_size = num_heads // num_kv_heads
    assert num_heads == group_size * num_kv_heads, "num_heads must be a multiple of num_kv_heads"
    assert q.dtype == k_cache.dtype == v_cache.dtype, "q and the caches must share a dtype"
    assert block_tables.dtype == seq_lens.dtype == torch.int32
    q = aligned(q)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if t is not None:
            check_aligned(name, t)
    assert k_cache.stride() == v_cache.stride(), "the K and V caches must share strides"
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0:
        return out

    tile_n, num_warps = decode_config(head_dim, q.dtype)
    # Partitions are whole tiles long, so only the last tile of a partition can be partial.
    partition_size = triton.cdiv(triton.cdiv(max_seq_len, num_splits), tile_n) * tile_n
    num_splits = triton.cdiv(max_seq_len, partition_size)
    # Partials only exist with several splits (a single split writes `out` directly).
    partials = num_splits if num_splits > 1 else 0
    part_out = torch.empty(num_seqs, num_heads, partials, head_dim, dtype=torch.float32,
                           device=q.device)
    part_lse = torch.empty(num_seqs, num_heads, partials, dtype=torch.float32, device=q.device)

    slices = num_kv_heads * triton.cdiv(group_size, GROUP_ROWS)
    paged_decode_split_kernel[(num_seqs, slices, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part_out, part_lse,
        scale * math.log2(math.e),
        k_cache.shape[1], group_size, num_heads, num_splits, partition_size,
        q.stride(0), q.stride(1),
        out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        HEAD_DIM=head_dim, GROUP_ROWS=GROUP_ROWS, TILE_N=tile_n,
        DOT_PRECISION=dot_precision(q.dtype), num_warps=num_warps, enable_fp_fusion=True,
    )
    if num_splits == 1:
        return out
    merge_splits_kernel[(num_seqs, num_heads)](
        out, part_out, part_lse, seq_lens,
        num_heads, num_splits, partition_size,
        out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, enable_fp_fusion=True,
    )
    return out
