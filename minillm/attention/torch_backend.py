"""The reference backend: plain torch, reads K/V page by page through the block tables."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minillm.attention.base import AttentionBackend, AttentionMetadata


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write each new token's K/V into its slot; a slot of -1 means "don't store"."""
    keep = slot_mapping >= 0
    if not keep.all():  # the engine stores every token: only then pay for the selection
        k, v, slot_mapping = k[keep], v[keep], slot_mapping[keep]
    num_blocks, block_size = k_cache.shape[:2]
    k_cache.view(num_blocks * block_size, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(num_blocks * block_size, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)


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


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """One query per sequence, all sequences at once: gather each context through its block
    table into a padded batch, mask the padding, attend. q: [S, Hq, D] -> [S, Hq, D]."""
    num_seqs, num_heads, dim = q.shape
    num_kv_heads, max_len = k_cache.shape[2], int(seq_lens.max())
    tables = block_tables[:, :-(-max_len // k_cache.shape[1])].long()
    keys = k_cache[tables].flatten(1, 2)[:, :max_len].transpose(1, 2)  # [S, Hkv, L, D]
    values = v_cache[tables].flatten(1, 2)[:, :max_len].transpose(1, 2)
    q = q.view(num_seqs, num_kv_heads, num_heads // num_kv_heads, dim)  # query groups per KV head
    in_context = torch.arange(max_len, device=q.device)[None, :] < seq_lens[:, None]
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=in_context[:, None, None, :],
                                         scale=scale)
    return out.reshape(num_seqs, num_heads, dim)


def paged_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  block_table: torch.Tensor, seq_len: int, scale: float) -> torch.Tensor:
    """A chunk of one sequence's queries, causal over its cached prefix and itself."""
    keys = gather_context(k_cache, block_table, seq_len)
    values = gather_context(v_cache, block_table, seq_len)
    return causal_attention(q, keys, values, scale)


def causal_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """q: the last q.shape[0] of the keys' positions. [T, Hq, D], [L, Hkv, D] -> [T, Hq, D]."""
    no_prefix = q.shape[0] == keys.shape[0]  # plain causal: the fast path of SDPA
    # A leading batch dimension of 1: PyTorch's CPU flash kernel only serves 4-D inputs (the
    # 3-D path is several times slower from ~200 tokens on).
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], keys.transpose(0, 1)[None], values.transpose(0, 1)[None],
        scale=scale, is_causal=no_prefix, enable_gqa=True,
        attn_mask=None if no_prefix else causal_mask(q.shape[0], keys.shape[0], q.device))
    return out[0].transpose(0, 1)


DECODE_GROUP = 64  # decodes gathered into one padded batch; sorted by length, they pad less


class TorchAttentionBackend(AttentionBackend):
    """Decodes are batched into gathered, masked attentions; prefill chunks go one by one,
    through the block table when part of the sequence is already cached."""

    name = "torch"

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float):
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode_only:  # every row is a decode: no rows to pick out and put back
            return self.decode(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale)
        out = torch.empty_like(q)
        rows, block_tables, seq_lens = meta.decodes
        if len(rows):
            out[rows] = self.decode(q[rows], k_cache, v_cache, block_tables, seq_lens, scale)
        for i, lo, hi, seq_len in meta.prefill_chunks:
            if hi - lo == seq_len:  # nothing cached before this chunk: its own k, v are all
                out[lo:hi] = causal_attention(q[lo:hi], k[lo:hi], v[lo:hi], scale)
            else:
                out[lo:hi] = paged_prefill(q[lo:hi], k_cache, v_cache, meta.block_tables[i],
                                           seq_len, scale)
        return out

    def decode(self, q, k_cache, v_cache, block_tables, seq_lens, scale) -> torch.Tensor:
        """The single-query sequences of a step: q [S, Hq, D] -> [S, Hq, D]."""
        out = torch.empty_like(q)
        order = seq_lens.argsort()  # similar lengths share padding
        for group in order.split(DECODE_GROUP):
            out[group] = paged_decode(q[group], k_cache, v_cache, block_tables[group],
                                      seq_lens[group], scale)
        return out
