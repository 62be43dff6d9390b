"""The CPU backend: the torch reference backend, with decode attention in a compiled C kernel.

In the torch backend a decode step copies every sequence's K/V blocks into a padded batch and
then attends (see `torch_backend.paged_decode`); on a CPU that copy is most of the attention's
cost. `paged_decode_cpu.c` reads each block once, in place, through the block table, with an
online softmax - the Triton decode kernel's algorithm as plain loops. Prefill chunks still go
through the torch backend (PyTorch's attention is fast there: a chunk's queries share one matmul).

The kernel is compiled on first use with the system C compiler, once per (head dim, block size,
cache dtype), into `~/.cache/minillm` (or `$MINILLM_CACHE`), and loaded with `ctypes`: no build
step at install time. Each build is checked once per process on a small decode against the torch
backend. Where no build works (no compiler, a compiler that fails, a wrong result) `available()`
says so with one log line and `"auto"` picks the torch backend instead; the failure is remembered
(a `.failed` file next to where the library would be), not retried by every new engine.
`MINILLM_DISABLE_CPU_KERNEL=1` switches the kernel off on any machine. Float32 and bfloat16
caches are supported.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from minillm.attention import torch_backend
from minillm.attention.torch_backend import TorchAttentionBackend

logger = logging.getLogger("minillm")

SOURCE = Path(__file__).with_name("paged_decode_cpu.c")
CACHE_DTYPES = {torch.float32: [], torch.bfloat16: ["-DCACHE_BF16"]}
# Tried in order: the fast build first; then without -march=native, for compilers that do not
# know the flag; then without OpenMP (Apple's clang has none), which runs on one thread.
FLAG_SETS = [["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], []]
# -ffast-math lets the compiler reorder float sums (vectorised dot products) and call the C
# library's vector exp; the kernel never makes inf or NaN, so its other assumptions hold too. It
# is given to the compile step only: linking a shared library with it, GCC before 13 adds
# crtfastmath.o, which switches the whole loading process (torch, numpy) to flush-to-zero.
COMPILE_FLAGS = ["-O3", "-ffast-math", "-fPIC"]
# Largest |kernel - torch backend| / max |torch backend| the check after a build accepts.
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
DISABLE_VARIABLE = "MINILLM_DISABLE_CPU_KERNEL"


class KernelUnavailable(RuntimeError):
    """The CPU attention kernel cannot be used on this machine; the message says why."""


class BuildFailed(RuntimeError):
    """One flag set did not give a working kernel (remembered in the build cache)."""


def compiler() -> str | None:
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return os.environ.get("CC") or found


def cache_dir() -> Path:
    return Path(os.environ.get("MINILLM_CACHE", Path.home() / ".cache" / "minillm"))


@functools.cache
def compiler_identity(cc: str) -> str:
    """The first line of `cc --version` (empty if it prints nothing): a build made by another
    compiler, or another version of it, is not reused."""
    result = subprocess.run([cc, "--version"], capture_output=True, text=True)
    return (result.stdout or result.stderr).partition("\n")[0]


@functools.cache
def cpu_isa() -> str:
    """The instruction-set extensions this CPU reports (the `flags` line of /proc/cpuinfo on x86
    Linux, `Features` on ARM), else what `platform` knows: what a -march=native build may use."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.partition(":")[2].strip()
    return platform.processor()


def build_key(cc: str, flags: list[str]) -> str:
    """Names a build: the source, the compiler and its version, the flags (which hold the
    kernel's constants) and the CPU. A `-march=native` build in a home folder shared by machines
    with other CPUs is then never loaded where it would stop on an unknown instruction."""
    parts = [SOURCE.read_text(), cc, compiler_identity(cc), *flags, platform.machine(), cpu_isa()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def load_kernel(head_dim: int, block_size: int, dtype: torch.dtype) -> ctypes.CDLL:
    """The checked kernel for these constants, built at first use; raises `KernelUnavailable`
    saying why where none works (found out once per process, and a failed build once per cache)."""
    if os.environ.get(DISABLE_VARIABLE) == "1":
        raise KernelUnavailable(f"the CPU attention kernel is switched off ({DISABLE_VARIABLE}=1)")
    kernel = _kernel_or_why_not(head_dim, block_size, dtype)
    if isinstance(kernel, str):
        raise KernelUnavailable(kernel)
    return kernel


@functools.cache
def _kernel_or_why_not(head_dim: int, block_size: int, dtype: torch.dtype) -> ctypes.CDLL | str:
    cc = compiler()
    if cc is None:
        return "no C compiler found (set CC, or install gcc or clang)"
    try:
        compiler_identity(cc)
    except OSError as err:
        return f"the C compiler {cc} does not run: {err}"
    defines = [f"-DHEAD_DIM={head_dim}", f"-DBLOCK_SIZE={block_size}", *CACHE_DTYPES[dtype]]
    errors = []
    for flags in FLAG_SETS:
        try:
            kernel = _checked_build(cc, [*flags, *COMPILE_FLAGS, *defines], head_dim, block_size,
                                    dtype)
        except BuildFailed as err:
            errors.append(f"{' '.join(flags) or '(no extra flags)'}: {err}")
            continue
        if "-fopenmp" not in flags:
            logger.warning("CPU attention kernel: built without OpenMP by %s, it runs on one "
                           "thread", cc)
        return kernel
    first = errors[0].partition("\n")[0]
    return (f"no build of the CPU attention kernel by {cc} works here (first: {first})\n"
            f"Failed builds are remembered in {cache_dir()}/*.failed (delete them to retry):\n"
            + "\n".join(errors))


def _checked_build(cc: str, flags: list[str], head_dim: int, block_size: int,
                   dtype: torch.dtype) -> ctypes.CDLL:
    """Build (or reuse) and load the library for these flags, then check it on a small decode.
    A failure is written next to where the library would be, so no later process repeats it."""
    target = cache_dir() / f"paged_decode_cpu_{build_key(cc, flags)}.so"
    failed = target.with_suffix(".failed")
    if failed.exists():
        raise BuildFailed(f"failed before: {failed.read_text()}")
    try:
        if not target.exists():
            _build(cc, flags, target)
        kernel = _bind(ctypes.CDLL(str(target)))
        _check(kernel, head_dim, block_size, dtype)
        return kernel
    except (subprocess.CalledProcessError, OSError, BuildFailed) as err:
        why = (getattr(err, "stderr", "") or str(err)).strip()
        with contextlib.suppress(OSError):  # an unwritable cache: nothing to remember it in
            failed.write_text(why)
        raise BuildFailed(why) from err


def _build(cc: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built, obj = Path(tmp) / target.name, Path(tmp) / "kernel.o"
        link = ["-fopenmp"] if "-fopenmp" in flags else []
        for command in ([cc, *flags, "-c", str(SOURCE), "-o", str(obj)],
                        [cc, "-shared", *link, str(obj), "-o", str(built), "-lm"]):
            subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(built, target)  # atomic: a concurrent build never sees half a file


@torch.no_grad()
def _check(kernel: ctypes.CDLL, head_dim: int, block_size: int, dtype: torch.dtype) -> None:
    """A small decode (GQA, lengths 1 to three blocks, shuffled blocks) through the kernel and
    through the torch backend: a build that computes something else is not used."""
    gen = torch.Generator().manual_seed(0)
    seq_lens = torch.tensor([1, block_size + 1, 3 * block_size], dtype=torch.int32)
    num_blocks = 10
    k_cache, v_cache = (torch.randn(num_blocks, block_size, 2, head_dim, generator=gen).to(dtype)
                        for _ in range(2))
    tables = torch.randperm(num_blocks, generator=gen)[:9].view(3, 3).to(torch.int32)
    q = torch.randn(3, 4, head_dim, generator=gen).to(dtype)
    scale = head_dim ** -0.5
    out = _run(kernel, q, k_cache, v_cache, tables, seq_lens, scale).float()
    expected = torch_backend.paged_decode(q, k_cache, v_cache, tables, seq_lens, scale).float()
    error = ((out - expected).abs().max() / expected.abs().max()).item()
    if not error <= CHECK_TOLERANCE[dtype]:  # `not <=`: NaN fails too
        raise BuildFailed(f"wrong result: relative error {error:.1e} against the torch backend")


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.paged_decode.argtypes = [ptr, ptr, ptr, ptr, i64, ptr, ptr, i64, i64, i64, ctypes.c_float]
    lib.paged_decode.restype = None
    return lib


def available(head_dim: int, block_size: int, dtype: torch.dtype) -> bool:
    """True if the kernel builds, loads and passes its check on this machine for these
    constants; where it does not, logs why (one line)."""
    if dtype not in CACHE_DTYPES:
        return False  # nothing to fall back from: float16 always takes the torch backend
    if os.environ.get(DISABLE_VARIABLE) == "1":
        logger.info("attention: the torch backend, not the CPU kernel (%s=1)", DISABLE_VARIABLE)
        return False
    try:
        load_kernel(head_dim, block_size, dtype)
        return True
    except KernelUnavailable as err:
        logger.warning("attention: the torch backend, not the CPU kernel: %s",
                       str(err).partition("\n")[0])
        return False


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Same contract as `torch_backend.paged_decode`: q [S, Hq, D] -> [S, Hq, D]. The caches must
    be float32 or bfloat16; every sequence length at least 1."""
    if k_cache.dtype not in CACHE_DTYPES:
        raise ValueError(f"the CPU kernel reads float32 or bfloat16 caches, not {k_cache.dtype}")
    kernel = load_kernel(q.shape[2], k_cache.shape[1], k_cache.dtype)
    return _run(kernel, q, k_cache, v_cache, block_tables, seq_lens, scale)


def _run(kernel: ctypes.CDLL, q, k_cache, v_cache, block_tables, seq_lens, scale) -> torch.Tensor:
    num_seqs, num_heads, _ = q.shape
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
