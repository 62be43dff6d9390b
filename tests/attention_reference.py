"""The ground truth every attention test compares against: plain softmax attention in float64."""
from __future__ import annotations

import torch


def causal_attention_float64(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
                             seq_lens: list[int], query_lens: list[int],
                             scale: float) -> torch.Tensor:
    """Sequence i owns the next `query_lens[i]` rows of q ([T, Hq, D]): the last positions of its
    context `keys[i]`, `values[i]` ([seq_lens[i], Hkv, D]), attended causally, one at a time."""
    outs, start = [], 0
    group = q.shape[1] // keys[0].shape[1]
    for k, v, n, q_len in zip(keys, values, seq_lens, query_lens):
        qs = q[start:start + q_len].cpu().double()
        k = k.cpu().double().repeat_interleave(group, dim=1)
        v = v.cpu().double().repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", qs, k) * scale
        q_pos = torch.arange(n - q_len, n)[:, None]
        scores = scores.masked_fill(torch.arange(n)[None, :] > q_pos, float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v))
        start += q_len
    return torch.cat(outs)
