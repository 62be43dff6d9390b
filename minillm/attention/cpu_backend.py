"""The CPU backend: the torch reference backend, with decode attention in a compiled C kernel.

In the torch backend a decode step copies every sequence's K/V blocks into a padded batch and
then attends (see `torch_backend.paged_decode`); on a CPU that copy is most of the attention's
cost. `paged_decode_cpu.c` reads each block once, in place, through the block table, with an
online softmax - the Triton decode kernel's algorithm as plain loops. Prefill chunks still go
through the torch backend (PyTorch's attention is fast there: a chunk's queries share one matmul).

The kernel is compiled on first use with the system C compiler, once per (head dim, block size,
cache dtype), into `~/.cache/minillm` (or `$MINILLM_CACHE`), and loaded with `ctypes`: no build
step at install time. Where no compiler works, `available()` says so and `"auto"` picks the torch
backend instead. Float32 and bfloat16 caches are supported.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from minillm.attention.torch_backend import TorchAttentionBackend

SOURCE = Path(__file__).with_name("paged_decode_cpu.c")
CACHE_DTYPES = {torch.float32: [], torch.bfloat16: ["-DCACHE_BF16"]}
# Tried in order: the fast build first; without OpenMP (Apple's clang has none) it runs on one
# thread; without -march=native for compilers that do not know the flag.
FLAG_SETS = [["-O3", "-march=native", "-fopenmp"], ["-O3", "-march=native"], ["-O3"]]
# -ffast-math lets the compiler reorder float sums (vectorised dot products) and call the C
# library's vector exp; the kernel never makes inf or NaN, so its other assumptions hold too. It
# is given to the compile step only: linking a shared library with it, GCC before 13 adds
# crtfastmath.o, which switches the whole loading process (torch, numpy) to flush-to-zero.
COMPILE_FLAGS = ["-ffast-math", "-fPIC"]


class KernelUnavailable(RuntimeError):
    """No C compiler on this machine could build the kernel."""


def compiler() -> str | None:
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return os.environ.get("CC") or found


def cache_dir() -> Path:
    return Path(os.environ.get("MINILLM_CACHE", Path.home() / ".cache" / "minillm"))


@functools.cache
def load_kernel(head_dim: int, block_size: int, dtype: torch.dtype) -> ctypes.CDLL:
    """Compile (or reuse) and load the kernel for these constants."""
    cc = compiler()
    if cc is None:
        raise KernelUnavailable("no C compiler found (set CC, or install gcc or clang)")
    defines = [f"-DHEAD_DIM={head_dim}", f"-DBLOCK_SIZE={block_size}", *CACHE_DTYPES[dtype]]
    errors = []
    for flags in FLAG_SETS:
        try:
            return _bind(ctypes.CDLL(str(_build(cc, [*flags, *COMPILE_FLAGS, *defines]))))
        except (subprocess.CalledProcessError, OSError) as err:
            errors.append(f"{' '.join(flags)}: {getattr(err, 'stderr', '') or err}")
    raise KernelUnavailable("the CPU attention kernel did not compile:\n" + "\n".join(errors))


def _build(cc: str, flags: list[str]) -> Path:
    """The shared library for these flags, compiled unless an identical build is cached. The
    key covers the source, flags, compiler and machine (-march=native binds it to this CPU)."""
    key = hashlib.sha256("\n".join([SOURCE.read_text(), *flags, cc, platform.machine(),
                                    platform.node()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"paged_decode_cpu_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built, obj = Path(tmp) / target.name, Path(tmp) / "kernel.o"
            link = ["-fopenmp"] if "-fopenmp" in flags else []
            for command in ([cc, *flags, "-c", str(SOURCE), "-o", str(obj)],
                            [cc, "-shared", *link, str(obj), "-o", str(built), "-lm"]):
                subprocess.run(command, check=True, capture_output=True, text=True)
            os.replace(built, target)  # atomic: a concurrent build never sees half a file
    return target


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.paged_decode.argtypes = [ptr, ptr, ptr, ptr, i64, ptr, ptr, i64, i64, i64, ctypes.c_float]
    lib.paged_decode.restype = None
    return lib


def available(head_dim: int, block_size: int, dtype: torch.dtype) -> bool:
    """True if the kernel builds (and loads) on this machine for these constants."""
    if dtype not in CACHE_DTYPES:
        return False
    try:
        load_kernel(head_dim, block_size, dtype)
        return True
    except KernelUnavailable:
        return False


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Same contract as `torch_backend.paged_decode`: q [S, Hq, D] -> [S, Hq, D]. The caches must
    be float32 or bfloat16; every sequence length at least 1."""
    num_seqs, num_heads, head_dim = q.shape
    if k_cache.dtype not in CACHE_DTYPES:
        raise ValueError(f"the CPU kernel reads float32 or bfloat16 caches, not {k_cache.dtype}")
    kernel = load_kernel(head_dim, k_cache.shape[1], k_cache.dtype)
    k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()  # the kernel assumes the layout
    q32 = q.float().contiguous()
    out = torch.empty_like(q32)
    tables, lens = block_tables.to(torch.int32).contiguous(), seq_lens.to(torch.int32).contiguous()
    kernel.paged_decode(q32.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(),
                        tables.shape[1], lens.data_ptr(), out.data_ptr(), num_seqs, num_heads,
                        k_cache.shape[2], scale)
    return out.to(q.dtype)


class CpuAttentionBackend(TorchAttentionBackend):
    """All of a step's decodes through the C kernel in one call per layer; prefill chunks as in
    the torch backend. Built for one model: its head dim, the cache's block size and dtype."""

    name = "cpu"

    def __init__(self, head_dim: int, block_size: int, dtype: torch.dtype):
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"attention_backend='cpu' supports float32 and bfloat16, not {dtype}")
        load_kernel(head_dim, block_size, dtype)  # compile now: a missing compiler shows at once

    def decode(self, q, k_cache, v_cache, block_tables, seq_lens, scale):
        if k_cache.device.type != "cpu":
            raise ValueError("attention_backend='cpu' runs on the CPU; use 'triton' or 'torch'")
        return paged_decode(q, k_cache, v_cache, block_tables, seq_lens, scale)
