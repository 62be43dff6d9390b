"""minillm's Triton kernels for PagedAttention (imported as `minillm_kernels`).

* `store_kv`: write new tokens' K/V into the paged cache at their slots.
* `paged_decode_attention`: one query per sequence, split-KV with GQA-packed tiles.
* `paged_prefill_attention`: query chunks of any length (prefill, chunked prefill, prefix-cache
  hits, mixed batches), causal over the cached prefix and themselves.

On a machine without a GPU they run under the Triton interpreter: set `TRITON_INTERPRET=1` in the
environment before `triton` is first imported.
"""
from minillm_kernels.paged_decode import choose_num_splits, paged_decode_attention
from minillm_kernels.paged_prefill import paged_prefill_attention
from minillm_kernels.store_kv import store_kv

__all__ = ["choose_num_splits", "paged_decode_attention", "paged_prefill_attention", "store_kv"]
