"""The one step every paged attention kernel shares: read a tile of K and V through a block table."""
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
