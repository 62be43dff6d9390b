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
        self.head_dim, self.rope = head_dim, rope
        self.register_buffer("inv_freq", inverse_frequencies(head_dim, rope), persistent=False)

    def _apply(self, fn, recurse=True):
        # `.to(torch.bfloat16)` would round the frequencies, and every angle with them (a round
        # trip through bfloat16 would not give them back): they move, but stay float32.
        super()._apply(fn, recurse)
        self.inv_freq = inverse_frequencies(self.head_dim, self.rope).to(self.inv_freq.device)
        return self

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        """The cos and sin of every token's angles, [T, 1, D] each: computed once per forward
        pass and shared by every layer (see `apply_rotary`)."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[:, None, :].to(dtype), emb.sin()[:, None, :].to(dtype)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q [T, Hq, D] and k [T, Hkv, D], rotated by the angles whose cos and sin are given."""
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
