"""The contract between the engine and an attention implementation."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class AttentionMetadata:
    """Where one step's flattened tokens live: built once per step, shared by every layer.

    The step's tokens from all sequences are laid end to end. Sequence `i` owns queries
    `query_start_loc[i]:query_start_loc[i+1]`; they are the *last* tokens of its context of
    `seq_lens[i]` tokens, so query `j` of a chunk of length `q` sits at position
    `seq_lens[i] - q + j` and attends causally to positions `0 ..` itself.
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot for each new token's K/V, -1 = skip
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32: cumulative query lengths
    seq_lens: torch.Tensor  # [num_seqs] int32: context length after this step (cached + new)
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32, padded with 0 past the context
    max_query_len: int
    max_seq_len: int

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.numel()

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1

    # Derived once per step on first use, then shared by every layer.
    @cached_property
    def decodes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sequences with a single query: its row in the step, their block tables and
        context lengths."""
        query_lens = self.query_start_loc.diff()
        seqs = torch.nonzero(query_lens == 1).flatten()
        return self.query_start_loc[seqs].long(), self.block_tables[seqs], self.seq_lens[seqs]

    @cached_property
    def prefill_chunks(self) -> list[tuple[int, int, int, int]]:
        """(sequence, first query row, end row, context length) of each chunk of 2+ queries."""
        starts, lens = self.query_start_loc.tolist(), self.seq_lens.tolist()
        return [(i, lo, hi, lens[i]) for i, (lo, hi) in enumerate(zip(starts, starts[1:]))
                if hi - lo > 1]


class AttentionBackend(ABC):
    """Stores K/V into the paged cache, then attends through the block tables."""

    name: str

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """Attention for one layer.

        q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim].
        k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim] (this layer's).
        Returns [num_tokens, num_heads, head_dim].
        """


BACKEND_NAMES = ("auto", "torch", "cpu", "triton")  # what `attention_backend` accepts


def get_backend(name: str = "auto", device: torch.device | str = "cpu", *,
                dtype: torch.dtype = torch.float32, head_dim: int = 64,
                block_size: int = 16) -> AttentionBackend:
    """`"torch"`, `"cpu"`, `"triton"`, or `"auto"`: Triton kernels on CUDA; on a CPU the compiled
    C decode kernel where it builds for this model (head dim, block size, cache dtype), else the
    torch reference."""
    device = torch.device(device)
    if name == "auto":
        from minillm.attention import cpu_backend
        if device.type == "cuda":
            name = "triton"
        else:
            name = "cpu" if cpu_backend.available(head_dim, block_size, dtype) else "torch"
    if name == "torch":
        from minillm.attention.torch_backend import TorchAttentionBackend
        return TorchAttentionBackend()
    if name == "cpu":
        from minillm.attention.cpu_backend import CpuAttentionBackend
        return CpuAttentionBackend(head_dim, block_size, dtype)
    if name == "triton":
        from minillm.attention.triton_backend import TritonAttentionBackend
        return TritonAttentionBackend()
    raise ValueError(f"unknown attention_backend {name!r}: choose one of {BACKEND_NAMES}")
