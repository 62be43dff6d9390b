"""The reference backend: plain torch, reads K/V page by page through the block tables."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minillm.attention.base import AttentionBackend, AttentionMetadata


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write each new token's K/V into its slot; a slot of -1 means "don't store"."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    num_blocks, block_size = k_cache.shape[:2]
    k_cache.view(num_blocks * block_size, *k_cache.shape[2:])[slots] = k[keep]
    v_cache.view(num_blocks * block_size, *v_cache.shape[2:])[slots] = v[keep]


def gather_context(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first `seq_len` tokens of one sequence, read block by block: [seq_len, kv_heads, dim]."""
    block_size = cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    return cache[block_table[:num_blocks].long()].flatten(0, 1)[:seq_len]


def causal_mask(query_len: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """True where a query may look: query j sits at position seq_len - query_len + j."""
    q_pos = torch.arange(seq_len - query_len, seq_len, device=device)[:, None]
    k_pos = torch.arange(seq_len, device=device)[None, :]
    return k_pos <= q_pos


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float):
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        starts = meta.query_start_loc.tolist()
        for i, seq_len in enumerate(meta.seq_lens.tolist()):
            lo, hi = starts[i], starts[i + 1]
            keys = gather_context(k_cache, meta.block_tables[i], seq_len)
            values = gather_context(v_cache, meta.block_tables[i], seq_len)
            mask = None if hi - lo == 1 else causal_mask(hi - lo, seq_len, q.device)
            out[lo:hi] = F.scaled_dot_product_attention(
                q[lo:hi].transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
                attn_mask=mask, scale=scale, enable_gqa=True).transpose(0, 1)
        return out
