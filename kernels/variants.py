"""Every kernel variant the Triton backend can launch, described for ahead-of-time compilation.

A Triton kernel is compiled once per combination of argument types, `tl.constexpr` values and
alignment specialisations. The backend's launches differ only in head dim and cache dtype (block
size, head counts, lengths and strides are runtime integers; alignments are fixed, see
`divisibility_attrs`), so this list is finite and small. The compile test and
`tools/kernel_report.py` compile each entry for real GPU targets with Triton's bundled `ptxas`,
which needs no GPU: that proves every launch the backend can make compiles, and shows its
register, spill and shared-memory budget.
"""
from __future__ import annotations

import contextlib
import io
import re
import time
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget

from minillm_kernels.common import DTYPES, HEAD_DIMS, dot_precision
from minillm_kernels.paged_decode import (GROUP_ROWS, decode_config, merge_splits_kernel,
                                          paged_decode_split_kernel)
from minillm_kernels.paged_prefill import prefill_config, paged_prefill_kernel
from minillm_kernels.store_kv import BLOCK_T as STORE_BLOCK_T
from minillm_kernels.store_kv import store_kv_kernel

TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass
class KernelVariant:
    name: str                  # e.g. "decode_split d128 fp16"
    kernel: object             # the @triton.jit function
    signature: dict            # argument name -> Triton type ("*fp16", "i32", "constexpr", ...)
    constexprs: dict
    num_warps: int = 4


def _signature(kernel, types: dict) -> dict:
    """Types for every argument: the given ones, "i32" for the rest but constexprs."""
    return {name: types.get(name, "i32") for name in kernel.arg_names}


def kernel_variants(head_dims=HEAD_DIMS, dtypes=DTYPES) -> list[KernelVariant]:
    """The variants for the given head dims x dtypes: store, decode split + merge, prefill."""
    variants = []
    for dtype in dtypes:
        ptr = "*" + TRITON_DTYPE[dtype]
        for head_dim in head_dims:
            tag = f"d{head_dim} {TRITON_DTYPE[dtype]}"
            variants.append(KernelVariant(
                f"store_kv {tag}", store_kv_kernel,
                _signature(store_kv_kernel, {
                    "k_ptr": ptr, "v_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr,
                    "slot_mapping_ptr": "*i64",
                    "HEAD_DIM": "constexpr", "BLOCK_T": "constexpr"}),
                {"HEAD_DIM": head_dim, "BLOCK_T": STORE_BLOCK_T}))

            tile_n, num_warps = decode_config(head_dim, dtype)
            variants.append(KernelVariant(
                f"decode_split {tag}", paged_decode_split_kernel,
                _signature(paged_decode_split_kernel, {
                    "q_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr, "out_ptr": ptr,
                    "block_tables_ptr": "*i32", "seq_lens_ptr": "*i32",
                    "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32", "scale_log2e": "fp32",
                    "HEAD_DIM": "constexpr", "GROUP_ROWS": "constexpr", "TILE_N": "constexpr",
                    "DOT_PRECISION": "constexpr"}),
                {"HEAD_DIM": head_dim, "GROUP_ROWS": GROUP_ROWS, "TILE_N": tile_n,
                 "DOT_PRECISION": dot_precision(dtype)},
                num_warps=num_warps))

            variants.append(KernelVariant(
                f"decode_merge {tag}", merge_splits_kernel,
                _signature(merge_splits_kernel, {
                    "out_ptr": ptr, "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32",
                    "seq_lens_ptr": "*i32", "HEAD_DIM": "constexpr"}),
                {"HEAD_DIM": head_dim}))

            block_m, block_n, num_warps = prefill_config(head_dim, dtype)
            variants.append(KernelVariant(
                f"prefill {tag}", paged_prefill_kernel,
                _signature(paged_prefill_kernel, {
                    "q_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr, "out_ptr": ptr,
                    "query_start_loc_ptr": "*i32", "seq_lens_ptr": "*i32",
                    "block_tables_ptr": "*i32", "scale_log2e": "fp32",
                    "HEAD_DIM": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
                    "DOT_PRECISION": "constexpr"}),
                {"HEAD_DIM": head_dim, "BLOCK_M": block_m, "BLOCK_N": block_n,
                 "DOT_PRECISION": dot_precision(dtype)},
                num_warps=num_warps))
    return variants


def divisibility_attrs(variant: KernelVariant) -> dict:
    """The alignment facts a launch gives the JIT, spelled out for ahead-of-time compilation.

    At launch, Triton marks every pointer that is 16-byte aligned and every integer divisible by
    16 (`tt.divisibility`), and compiles a binary for that pattern; it lets the compiler emit
    wide vector loads. The launchers guarantee the pattern for data pointers and strides
    (`common.aligned`); arguments listed in the kernel's `do_not_specialize` are never marked.
    """
    attrs = {}
    for index, param in enumerate(variant.kernel.params):
        arg_type = variant.signature[param.name]
        integer_or_pointer = arg_type.startswith(("*", "i"))
        if integer_or_pointer and not param.do_not_specialize:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return attrs


def compile_variant(variant: KernelVariant, capability: int):
    """Compile one variant for an NVIDIA GPU of the given compute capability (e.g. 90 = H100)."""
    source = triton.compiler.ASTSource(fn=variant.kernel, signature=variant.signature,
                                       constexprs=variant.constexprs,
                                       attrs=divisibility_attrs(variant))
    return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": variant.num_warps, "enable_fp_fusion": True})


def compile_with_usage(variant: KernelVariant, capability: int) -> tuple[object, dict]:
    """Compile a variant afresh and read its registers, spills and shared memory.

    A GPU would report registers and spills when it loads the binary. Without one, ask `ptxas`:
    Triton runs it with `-v` (verbose), which prints "Used N registers, X bytes spill stores,
    Y bytes spill loads"; Triton shows that log when `dump_ptxas_log` is on, and compiling
    afresh (`always_compile`, no cache hit) makes sure ptxas runs.
    """
    log = io.StringIO()
    with triton.knobs.compilation.scope(), triton.knobs.nvidia.scope():
        triton.knobs.compilation.always_compile = True
        triton.knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            compiled = compile_variant(variant, capability)
    text = log.getvalue()

    def number(pattern: str) -> int:
        return int(re.search(pattern, text).group(1))

    return compiled, {"registers": number(r"Used (\d+) registers"),
                      "spill_stores": number(r"(\d+) bytes spill stores"),
                      "spill_loads": number(r"(\d+) bytes spill loads"),
                      "shared": compiled.metadata.shared}


# The GPUs the compile check targets: name -> (compute capability, shared memory one block may
# use, in bytes).
GPU_TARGETS = {"H100": (90, 227 * 1024), "A100": (80, 163 * 1024)}


def compile_report(capability: int, variants: list[KernelVariant] | None = None) -> list[dict]:
    """Compile every variant for one GPU; one row per variant with its resource usage."""
    rows = []
    for variant in variants if variants is not None else kernel_variants():
        started = time.perf_counter()
        _, usage = compile_with_usage(variant, capability)
        rows.append({"variant": variant.name, "num_warps": variant.num_warps, **usage,
                     "seconds": time.perf_counter() - started})
    return rows
