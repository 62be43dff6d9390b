"""Lab 5: the four parts of minillm's paged decode kernel (`kernels/paged_decode.py`).

Each function below is a `@triton.jit` helper that minillm's kernels call (minillm's own
versions are in `kernels/attention_parts.py`; don't peek before you try): the tests run
minillm's real kernel with your helper in place of its own, under the Triton interpreter
(`TRITON_INTERPRET=1`, set by this lab's conftest), and compare with attention in float64.
Write them with `triton.language` operations only (`tl.load`, `tl.arange`, `tl.maximum`,
`tl.exp2`, `tl.dot`, ...): they must also compile for an H100, which the tests check too.

Read `kernels/paged_decode.py` first: `paged_decode_split_kernel` (stage 1) shows where each
helper is called and what it is given.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_kv_tile(k_cache_ptr, v_cache_ptr, block_table, pos, in_range, dims, block_size,
                 stride_c_block, stride_c_slot, head_offset):
    """Task 5.1 — block-table addressing. Return `(k, v)`, each `[len(pos), len(dims)]`: the
    keys and values of the logical positions `pos` of one sequence, for one KV head.

    - `k_cache_ptr`, `v_cache_ptr`: the caches `[num_blocks, block_size, num_kv_heads,
      head_dim]`, with strides `stride_c_block`, `stride_c_slot`, (head stride), 1;
    - `block_table`: a pointer to this sequence's row of the block table (int32 physical
      block ids: logical block i lives in physical block `block_table[i]`);
    - `pos`: int32 positions in the sequence (a tile may span several, non-adjacent blocks);
    - `in_range`: which entries of `pos` are real; the others must read 0.0 and must not touch
      the block table or the caches (their blocks may not exist);
    - `dims`: `tl.arange(0, HEAD_DIM)`; `head_offset`: kv_head × the head stride.

    Hint: token p is in physical block `block_table[p // block_size]`, slot `p % block_size`.
    Make the block id int64 before multiplying by `stride_c_block` (a large cache overflows
    int32). Load with `mask=` and `other=0.0`.
    """
    raise NotImplementedError("Task 5.1: read K and V through the block table")


@triton.jit
def gqa_tile_heads(slice_id, group_size, GROUP_ROWS: tl.constexpr):
    """Task 5.2 — GQA packing. Return `(kv_head, heads, row_in_group)` for stage-1 program
    `slice_id` (its index along grid axis 1).

    Query heads `h * group_size .. (h + 1) * group_size - 1` share KV head `h`. One program
    packs (part of) a group into the GROUP_ROWS rows of its query tile, so one K tile read
    serves them all. A group longer than GROUP_ROWS is cut into `cdiv(group_size, GROUP_ROWS)`
    slices, one program each, in order: program `slice_id` serves slice
    `slice_id % slices_per_kv_head` of KV head `slice_id // slices_per_kv_head`.

    - `kv_head`: the KV head this program reads (a scalar);
    - `heads`: `[GROUP_ROWS]`, the query head each row holds;
    - `row_in_group`: `[GROUP_ROWS]` booleans, False for padding rows past the group's end.

    Hint: `tl.cdiv`, `tl.arange(0, GROUP_ROWS)`. GROUP_ROWS is 16 in the kernel, but the tests
    use other values too.
    """
    raise NotImplementedError("Task 5.2: which query heads the tile's rows hold")


@triton.jit
def online_softmax_update(m_i, l_i, acc, scores, v, DOT_PRECISION: tl.constexpr):
    """Task 5.3 — the online softmax. Fold one tile into each row's running state and return
    `(m_new, l_new, acc_new)`.

    The state of a row, after the tiles seen so far: `m_i` the largest score, `l_i` the sum of
    `exp2(score - m_i)`, `acc` the sum of `exp2(score - m_i) * v_row` (`[ROWS, HEAD_DIM]`).
    `scores`: `[ROWS, TILE]` float32, already in log2 units (scale × log2 e), `-inf` for keys
    that must not count; `v`: `[TILE, HEAD_DIM]` in the cache dtype. Every row has a finite score
    in its first tile. After the last tile, `acc / l` is softmax (base 2) of the scores times V.

    Hint: when the max grows from m to m_new, multiply what was summed by `exp2(m - m_new)`.
    Use `tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)` for the weighted sum of V.
    """
    raise NotImplementedError("Task 5.3: the online-softmax update")


@triton.jit
def merge_partial(lse_max, weight_sum, acc, lse, part_out):
    """Task 5.4 — the split merge. Fold one partition's result into the running merge and return
    `(lse_max, weight_sum, acc)`.

    With split-KV, each partition of a context returns its normalised output `part_out`
    (`[HEAD_DIM]` float32) and `lse` = log2(sum of exp2(score)) over its keys. The exact
    attention output is the mix of the parts weighted by `exp2(lse_p - LSE_total)`. The merge
    walks the partitions in turn, like the online softmax one level up: `lse_max` the largest
    `lse` so far (starts at -inf), `weight_sum` the sum of `exp2(lse_p - lse_max)` (starts at
    0), `acc` the sum of those weights times `part_out`. The kernel stores `acc / weight_sum`.

    Hint: rescale `weight_sum` and `acc` by `exp2(old max - new max)`; `lse` may be large (say
    300), so never compute `exp2(lse)` on its own.
    """
    raise NotImplementedError("Task 5.4: merge one partition by its log-sum-exp")
