"""Linear layers with their weights pre-packed for oneDNN, for serving on a CPU.

`nn.Linear` on a CPU calls a BLAS library (Intel MKL in PyPI's torch) that re-arranges the weight
into its preferred blocked layout on every call, and on AMD processors takes a slower code path.
oneDNN, also inside torch, can do that re-arrangement once, when the model is loaded: the same
float32 product, with the usual rounding differences of a different summation order, about twice
as fast on the machine of docs/benchmarks.md. vLLM's CPU backend calls oneDNN for its linear
layers too.

The engine packs its model on CPU (`can_pack`, then `pack_linear_layers`); `load_model` alone does
not, so the chapters and tests see plain `nn.Linear` modules with their checkpoint weights.

Whether oneDNN can run a dtype depends on the CPU, not only on the torch build: its bfloat16 path
needs AVX-512 (or AVX-NE-CONVERT) and raises on a CPU with AVX2 only. So packing is decided by a
probe - pack a small random layer, run it, compare with `F.linear` - once per dtype and process;
where it fails the model keeps its `nn.Linear` layers and one log line says why.
`MINILLM_DISABLE_PACKING=1` keeps them on any machine (CI runs the engine tests that way).

oneDNN prepares (and caches, in two caches of 1,024 entries) a kernel and its buffers for every
input shape it sees: a server whose steps carry any number of tokens from 1 to 2,048 would fill
them with a few hundred kilobytes per new row count, RSS growing by 150 MiB over hours, and pay
the kernel's preparation on each new one. So the rows are padded up to a bucket (`padded_rows`:
exact up to 16, then 8 buckets per doubling, at most 12.5 % of padding): fewer than 80 shapes
in all, prepared once.

A packed call has a fixed cost too (tens of microseconds here), which a small layer with a few
rows - a decode step of one request, of a small model - never earns back: plain `F.linear` is
several times faster there. So `pack_linear_layers` times both on each layer shape, once per
process, at 1, 4, 16, 64 and 256 rows, and a layer keeps its plain weight as well (for its
small products) where `F.linear` is clearly faster below some row count. Only small layers do:
the large ones, where packing pays from the first row, hold one copy.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("minillm")

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)  # the dtypes worth probing
# Largest |packed - F.linear| / max |F.linear| the probe accepts: float32 differs only by the
# summation order; a bfloat16 output is rounded to 8 bits of mantissa.
PROBE_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
DISABLE_VARIABLE = "MINILLM_DISABLE_PACKING"
ROW_GRID = (1, 4, 16, 64, 256)  # the row counts at which plain and packed products are timed
PLAIN_MARGIN = 0.8  # F.linear is used below a row count only where it takes < 80 % of the time


class PackedLinear(nn.Module):
    """`y = x W^T + b` with W held in oneDNN's layout; replaces one `nn.Linear`.

    The packed weight is a buffer, so `state_dict()` holds it (as `packed_weight`, an opaque
    oneDNN tensor: `.to_dense()` gives back the original weight) and `.to()` converts it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, plain_below: float = 0):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed_weight", pack(weight.detach()))
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        # Fewer rows than `plain_below` go through F.linear on this copy (not in the state_dict:
        # `packed_weight` already holds the weight).
        self.plain_below = plain_below
        self.register_buffer("plain_weight", weight.detach() if plain_below else None,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows < self.plain_below:
            return F.linear(x, self.plain_weight, self.bias)
        padded = F.pad(x.reshape(rows, self.in_features), (0, 0, 0, padded_rows(rows) - rows))
        out = onednn_linear(padded, self.packed_weight, self.bias)
        return out[:rows].reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, plain_below={self.plain_below}")

    def _apply(self, fn, recurse=True):
        # `.to()`, `.float()`, ... run `fn` on every tensor, and oneDNN's layout can be neither
        # cast nor copied: unpack, convert as usual, pack again.
        self.packed_weight = self.packed_weight.to_dense()
        super()._apply(fn, recurse)
        self.packed_weight = pack(self.packed_weight)
        return self


def onednn_linear(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None):
    """oneDNN's product of a [rows, in] input with a packed weight (no fused activation)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


def padded_rows(rows: int) -> int:
    """The bucket of a row count: itself up to 16; above, rounded up to a multiple of an eighth
    of the power of two below it (17 -> 18, 100 -> 104, 1025 -> 1152, 2048 -> 2048)."""
    if rows <= 16:
        return rows
    step = 1 << (rows.bit_length() - 4)
    return -(-rows // step) * step


def pack(weight: torch.Tensor) -> torch.Tensor:
    """The weight [out, in] re-arranged into oneDNN's blocked layout, as an opaque tensor."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def can_pack(model: nn.Module) -> bool:
    """The model is on the CPU in a dtype oneDNN runs on this machine (see `packing_refused`).
    Where packing would apply but cannot, logs why, once per call."""
    weight = next(model.parameters())
    if weight.device.type != "cpu" or weight.dtype not in PACKABLE_DTYPES:
        return False  # nothing to fall back from: the GPU and float16 always use nn.Linear
    if os.environ.get(DISABLE_VARIABLE) == "1":
        logger.info("linear layers: nn.Linear, not oneDNN-packed (%s=1)", DISABLE_VARIABLE)
        return False
    reason = packing_refused(weight.dtype)
    if reason is not None:
        logger.warning("linear layers: nn.Linear, not oneDNN-packed: %s", reason)
    return reason is None


@functools.cache
@torch.no_grad()
def packing_refused(dtype: torch.dtype) -> str | None:
    """Why oneDNN cannot run packed linear layers in this dtype on this CPU, or None if it can:
    a small random layer is packed and run, and its output compared with `F.linear`'s."""
    gen = torch.Generator().manual_seed(0)
    weight, bias, x = (torch.randn(shape, generator=gen).to(dtype) for shape in ((48, 64), 48, (5, 64)))
    try:
        out = PackedLinear(weight, bias)(x).float()
    except Exception as err:  # noqa: BLE001 - whatever oneDNN raises means "not here"
        return f"{dtype} fails here ({type(err).__name__}: {str(err).splitlines()[0]})"
    expected = F.linear(x.float(), weight.float(), bias.float())
    error = ((out - expected).abs().max() / expected.abs().max()).item()
    if not error <= PROBE_TOLERANCE[dtype]:  # `not <=`: a NaN output is refused too
        return f"{dtype} gives wrong results here (relative error {error:.1e} against F.linear)"
    return None


@torch.no_grad()
def pack_linear_layers(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` of the model by a `PackedLinear`, in place (a tied `lm_head`
    gets its own packed copy; the embedding keeps the original), each with the row count below
    which its shape runs faster unpacked (`plain_below`). Call it where `can_pack`."""
    routes = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                below = plain_below(*child.weight.shape, child.bias is not None, child.weight.dtype)
                setattr(parent, name, PackedLinear(child.weight, child.bias, below))
                routes.append(below)
    unpacked = [f"{routes.count(b)} below {b} rows" if b < math.inf else
                f"{routes.count(b)} at every row count" for b in sorted(set(routes)) if b]
    logger.info("linear layers: %d oneDNN-packed; F.linear where measured faster: %s",
                len(routes), ", ".join(unpacked) or "none")
    return model


@functools.cache
@torch.no_grad()
def plain_below(out_features: int, in_features: int, bias: bool, dtype: torch.dtype) -> float:
    """The smallest row count of `ROW_GRID` from which the packed product is (nearly) as fast as
    F.linear for this layer shape: 0 where it is from the first row, `inf` where F.linear is
    clearly faster at every one. Timed once per shape and process, on random weights, so every
    engine of a process routes a shape alike."""
    gen = torch.Generator().manual_seed(0)  # not the global one: a seeded run stays as it was
    weight = torch.randn(out_features, in_features, generator=gen).to(dtype)
    bias_ = torch.zeros(out_features, dtype=dtype) if bias else None
    packed = PackedLinear(weight, bias_)
    for rows in ROW_GRID:
        x = torch.randn(rows, in_features, generator=gen).to(dtype)
        if median_seconds(lambda: F.linear(x, weight, bias_)) >= PLAIN_MARGIN * median_seconds(
                lambda: packed(x)):
            return rows if rows > ROW_GRID[0] else 0
    return math.inf


def median_seconds(run, repeats: int = 5) -> float:
    run()  # the first call prepares oneDNN's kernel for the shape
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2]
