"""The parts the paged attention kernels are built from, each a small `@triton.jit` function.

- `load_kv_tile`: read a tile of K and V through a block table (decode and prefill);
- `gqa_tile_heads`: GQA packing, the query heads a decode program's tile rows hold;
- `online_softmax_update`: fold one tile into the online softmax (decode and prefill);
- `merge_partial`: fold one split-KV partition into the merge of stage 2 (decode).

Triton inlines them into the kernels that call them (the compiled code is the same as if they
were written inline). Lab 5 has a learner write each one; its tests run minillm's kernels with
the learner's version in place of the one here.

**The online softmax.** Softmax needs the maximum of all scores before it can exponentiate any
of them (for stability), but a kernel that streams K and V sees them a tile at a time. The
online softmax keeps, per query row, the running maximum `m` of the scores seen so far, the running sum `l` of
`exp2(score - m)`, and the un-normalised output `acc` = sum of `exp2(score - m) * v`. When a
new tile raises the maximum from `m` to `m_new`, everything summed so far is rescaled by
`exp2(m - m_new)`; at the end `acc / l` is exactly softmax(scores) @ V. Scores are in log2 units
(the softmax scale was multiplied by log2(e)), so `exp2` replaces `exp`.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_kv_tile(k_cache_ptr, v_cache_ptr, block_table, pos, in_range, dims, block_size,
                 stride_c_block, stride_c_slot, head_offset):
    """K and V (`[len(pos), HEAD_DIM]`) of the logical positions `pos` of one sequence, for one
    KV head (`head_offset` = head × its stride); positions outside `in_range` read 0.

    Each position finds its physical block through the block table, so a tile may span several
    (non-adjacent) blocks. Offsets are int64 before multiplying by the block stride: a large
    cache overflows int32.
    """
    block = tl.load(block_table + pos // block_size, mask=in_range, other=0)
    offsets = (block.to(tl.int64) * stride_c_block + (pos % block_size) * stride_c_slot
               + head_offset)
    k = tl.load(k_cache_ptr + offsets[:, None] + dims[None, :], mask=in_range[:, None], other=0.0)
    v = tl.load(v_cache_ptr + offsets[:, None] + dims[None, :], mask=in_range[:, None], other=0.0)
    return k, v


@triton.jit
def gqa_tile_heads(slice_id, group_size, GROUP_ROWS: tl.constexpr):
    """GQA packing: which query heads the rows of stage-1 program `slice_id` (grid axis 1) hold.

    Each KV head serves `group_size` consecutive query heads, cut into slices of GROUP_ROWS rows
    (`cdiv(group_size, GROUP_ROWS)` slices per KV head). Returns `(kv_head, heads, row_in_group)`:
    the KV head the program reads, the query head of each of its GROUP_ROWS rows, and which rows
    are real (the rest are padding past the group: loaded as 0, never stored).
    """
    slices_per_kv_head = tl.cdiv(group_size, GROUP_ROWS)
    kv_head = slice_id // slices_per_kv_head
    first_in_group = (slice_id % slices_per_kv_head) * GROUP_ROWS
    rows = tl.arange(0, GROUP_ROWS)
    heads = kv_head * group_size + first_in_group + rows
    return kv_head, heads, first_in_group + rows < group_size


@triton.jit
def online_softmax_update(m_i, l_i, acc, scores, v, DOT_PRECISION: tl.constexpr):
    """Fold one tile into the running state of each query row; returns `(m_new, l_new, acc_new)`.

    `m_i`, `l_i`: [ROWS] float32; `acc`: [ROWS, HEAD_DIM] float32; `scores`: [ROWS, TILE]
    float32 in log2 units, `-inf` where a key must not count (past the context, or causally
    hidden); `v`: [TILE, HEAD_DIM] in the cache dtype. A row's max must be finite after its
    first tile (every caller's first tile holds a visible key), so `exp2(-inf - m_new)` = 0.
    """
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    alpha = tl.exp2(m_i - m_new)                   # rescales what was summed so far
    p = tl.exp2(scores - m_new[:, None])
    l_new = l_i * alpha + tl.sum(p, axis=1)
    acc_new = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_new, acc_new


@triton.jit
def merge_partial(lse_max, weight_sum, acc, lse, part_out):
    """Fold one partition's result into a running merge; returns `(lse_max, weight_sum, acc)`.

    `lse` is the partition's log2-sum-exp2 of scores and `part_out` its normalised output. The
    partition's weight in the final softmax is `exp2(lse - LSE_total)`; as with the online
    softmax, the merge keeps the largest `lse` seen so far and rescales what it summed whenever
    that grows. After the last partition the result is `acc / weight_sum`.
    """
    new_max = tl.maximum(lse_max, lse)
    rescale = tl.exp2(lse_max - new_max)
    weight = tl.exp2(lse - new_max)
    return new_max, weight_sum * rescale + weight, acc * rescale + weight * part_out
