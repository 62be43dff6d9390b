"""Rotary position embeddings, including Llama 3's long-context frequency scaling."""
from __future__ import annotations

import math

import torch


def inverse_frequencies(head_dim: int, rope: dict) -> torch.Tensor:
    """One rotation frequency per pair of dimensions, scaled as `rope["rope_type"]` says."""
    theta = rope.get("rope_theta", 10000.0)
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / rope["factor"]
    if kind == "llama3":
        return llama3_scaled(inv_freq, rope)
    raise ValueError(f"unsupported rope_type {kind!r}: minillm knows default, linear and llama3")


def llama3_scaled(inv_freq: torch.Tensor, rope: dict) -> torch.Tensor:
    """Llama 3: slow (long-wavelength) frequencies divided by `factor`, fast ones kept,
    a smooth blend between the two bands."""
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_len = rope["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    in_between = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(in_between, blended, scaled)


class RotaryEmbedding(torch.nn.Module):
    """Rotates q and k by an angle proportional to each token's position."""

    def __init__(self, head_dim: int, rope: dict):
        super().__init__()
        self.register_buffer("inv_freq", inverse_frequencies(head_dim, rope), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """positions [T]; q [T, Hq, D]; k [T, Hkv, D]."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[:, None, :].to(q.dtype), emb.sin()[:, None, :].to(q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
