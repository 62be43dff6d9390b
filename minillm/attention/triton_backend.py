"""The Triton backend: PagedAttention kernels from `minillm_kernels` (the top-level kernels/).

Each layer's forward is two launches (three for split decode):

1. `store_kv` writes the step's new K/V into the paged cache at `meta.slot_mapping`;
2. a decode-only step (`meta.is_decode_only`) runs the split-KV decode kernel, with the number
   of splits picked by `choose_num_splits` (below); every other step - prefill, chunked prefill,
   prefix-cache hits, mixed decode + prefill batches - runs the prefill kernel in one launch.

On a CUDA GPU the kernels are compiled. On a CPU they run under the Triton interpreter, which
must be switched on before `triton` is first imported (`TRITON_INTERPRET=1` in the environment):
slow, but bit-for-bit the same program, which is how the tests and the course run them.
"""
from __future__ import annotations

import torch
from triton.runtime.interpreter import InterpretedFunction

from minillm.attention.base import AttentionBackend, AttentionMetadata
from minillm_kernels import (choose_num_splits, paged_decode_attention, paged_prefill_attention,
                             store_kv)
from minillm_kernels.store_kv import store_kv_kernel
from minillm_kernels.common import DTYPES, HEAD_DIMS

# An H100's SM count: what the split heuristic assumes when there is no GPU to ask (interpreter
# runs then take the same decisions a real H100 would).
DEFAULT_NUM_SMS = 132


def interpreter_active() -> bool:
    """True if Triton was imported with TRITON_INTERPRET=1 (kernels then run on the CPU)."""
    return isinstance(store_kv_kernel, InterpretedFunction)


class TritonAttentionBackend(AttentionBackend):
    """PagedAttention through Triton kernels.

    `num_kv_splits` fixes the number of split-KV partitions for decode steps (tests use it to
    force 1 or several); by default the heuristic decides per step.
    """

    name = "triton"

    def __init__(self, num_kv_splits: int | None = None):
        self.num_kv_splits = num_kv_splits

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata, scale: float) -> torch.Tensor:
        self._check_supported(q, k_cache)
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode_only:
            num_splits = self.num_kv_splits or self.pick_num_splits(q, k_cache, meta)
            return paged_decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                                          scale, meta.max_seq_len, num_splits)
        return paged_prefill_attention(q, k_cache, v_cache, meta.query_start_loc, meta.seq_lens,
                                       meta.block_tables, meta.max_query_len, scale)

    @staticmethod
    def pick_num_splits(q: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata) -> int:
        """Split-KV heuristic (see `choose_num_splits`): at least 4 programs per SM, partitions
        of at least 256 tokens. On an H100, batch 64 x 8 KV heads (512 programs) gets 2 splits;
        batch 2 x 8 KV heads at 4k tokens gets 16 splits of 256 tokens."""
        if q.is_cuda:
            num_sms = torch.cuda.get_device_properties(q.device).multi_processor_count
        else:
            num_sms = DEFAULT_NUM_SMS
        num_kv_heads = k_cache.shape[2]
        return choose_num_splits(meta.num_seqs, num_kv_heads, q.shape[1] // num_kv_heads,
                                 meta.max_seq_len, num_sms)

    @staticmethod
    def _check_supported(q: torch.Tensor, k_cache: torch.Tensor) -> None:
        head_dim = q.shape[-1]
        if head_dim not in HEAD_DIMS:
            raise ValueError(f"the Triton backend supports head_dim in {HEAD_DIMS}, not {head_dim}")
        if k_cache.dtype not in DTYPES:
            raise ValueError(f"the Triton backend supports caches of {DTYPES}, not {k_cache.dtype}")
        if q.shape[1] % k_cache.shape[2]:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if not q.is_cuda and not interpreter_active():
            raise RuntimeError(
                "the Triton backend needs a CUDA GPU, or the Triton interpreter on CPU: set "
                "TRITON_INTERPRET=1 in the environment before anything imports triton, or use "
                "attention_backend='torch'")
