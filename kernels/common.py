"""Small helpers shared by the kernel launchers."""
from __future__ import annotations

import torch

# What the kernels are built and compile-checked for (the backend refuses anything else).
HEAD_DIMS = (16, 32, 64, 128, 256)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision: float32 caches stay IEEE float32 (a GPU would otherwise round
    them to TF32, ~1e-3 relative error); 16-bit inputs ignore the setting."""
    return "ieee" if dtype == torch.float32 else "tf32"


def is_aligned(t: torch.Tensor) -> bool:
    """True if `t` meets what the compiled kernels assume of every data tensor: its first
    element 16-byte aligned, its last dim contiguous, and its other strides multiples of 16
    elements. The assumption lets Triton issue wide vector loads; the launchers guarantee it.
    """
    return (t.data_ptr() % 16 == 0 and t.stride(-1) == 1
            and all(s % 16 == 0 for s in t.stride()[:-1]))


def aligned(t: torch.Tensor) -> torch.Tensor:
    """`t` itself if `is_aligned(t)`, else an aligned contiguous copy (inputs only)."""
    if is_aligned(t):
        return t
    copy = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    copy.copy_(t)
    if not is_aligned(copy):
        raise ValueError(f"shape {tuple(t.shape)} cannot be laid out for the kernels: "
                         "head_dim must be a multiple of 16")
    return copy


def check_aligned(name: str, t: torch.Tensor) -> None:
    """For tensors the kernels write (caches, outputs): they cannot be swapped for a copy."""
    if not is_aligned(t):
        raise ValueError(f"{name} must start 16-byte aligned with a contiguous last dim and other "
                         f"strides that are multiples of 16; got strides {t.stride()}")
