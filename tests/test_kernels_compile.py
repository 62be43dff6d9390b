"""The kernels compile for real GPUs, with no GPU: Triton's bundled ptxas builds H100/A100 cubins.

Two facts together prove that every launch the Triton backend can make compiles cleanly:

1. each variant in `minillm_kernels.variants.kernel_variants()` compiles for sm_90a (H100) and
   sm_80 (A100) without spilling registers and within the block's shared-memory limit;
2. the launchers, called over every head dim x dtype (x decode split/merge x prefill x store),
   ask Triton's JIT for exactly those variants: same argument types, same constexprs, same
   alignment specialisation. The JIT's own binder computes what it would compile; the launch
   itself is intercepted before it needs a GPU.

Runs without the interpreter (`make test-kernels-compile`).
"""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = [
    pytest.mark.compile,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="compiles real kernels: run without TRITON_INTERPRET"),
]


@pytest.mark.parametrize("gpu", ["H100", "A100"])
def test_every_variant_compiles_without_spills(gpu):
    from minillm_kernels.variants import GPU_TARGETS, compile_report

    capability, shared_limit = GPU_TARGETS[gpu]
    rows = compile_report(capability)
    assert len(rows) == 60  # 5 head dims x 3 dtypes x (store, decode split, merge, prefill)
    spilling = [r["variant"] for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spilling, f"register spills on {gpu}: {spilling}"
    too_big = [r["variant"] for r in rows if r["shared"] > shared_limit]
    assert not too_big, f"shared memory over the {gpu} limit: {too_big}"
    assert all(0 < r["registers"] <= 255 for r in rows)


class LaunchRecorder:
    """Stands in for `kernel.run`: records what the JIT would have been asked to compile."""

    def __init__(self, kernel, backend):
        from triton.runtime.jit import create_function_from_signature

        self.kernel, self.backend = kernel, backend
        self.binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        self.launches = []

    def __call__(self, *args, grid, warmup, **kwargs):
        bound, specialization, options = self.binder(*args, **kwargs)
        options, signature, constexprs, attrs = self.kernel._pack_args(
            self.backend, kwargs, bound, specialization, options)
        self.launches.append(compile_key(self.kernel, signature, constexprs, attrs,
                                         options.num_warps))


def compile_key(kernel, signature: dict, constexprs: dict, attrs: dict, num_warps: int) -> str:
    """Everything that selects a compiled binary, as one comparable string."""
    attrs = {path: attr for path, attr in attrs.items() if attr}  # the JIT lists empty ones too
    return repr((kernel.fn.__name__, sorted(signature.items()), sorted(constexprs.items()),
                 sorted(attrs.items()), num_warps))


def variant_key(variant) -> str:
    from minillm_kernels.variants import divisibility_attrs

    index = {name: i for i, name in enumerate(variant.kernel.arg_names)}
    constexprs = {(index[name],): value for name, value in variant.constexprs.items()}
    return compile_key(variant.kernel, variant.signature, constexprs, divisibility_attrs(variant),
                       variant.num_warps)


def test_launchers_only_ask_for_compiled_variants(monkeypatch):
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    from minillm_kernels import paged_decode_attention, paged_prefill_attention, store_kv
    from minillm_kernels.common import DTYPES, HEAD_DIMS
    from minillm_kernels.paged_decode import merge_splits_kernel, paged_decode_split_kernel
    from minillm_kernels.paged_prefill import paged_prefill_kernel
    from minillm_kernels.store_kv import store_kv_kernel
    from minillm_kernels.variants import kernel_variants

    backend = make_backend(GPUTarget("cuda", 90, 32))
    recorders = {}
    for kernel in (store_kv_kernel, paged_decode_split_kernel, merge_splits_kernel,
                   paged_prefill_kernel):
        recorders[kernel.fn.__name__] = LaunchRecorder(kernel, backend)
        monkeypatch.setattr(kernel, "run", recorders[kernel.fn.__name__])

    num_heads, kv_heads, block_size, num_blocks = 8, 2, 16, 8
    for dtype in DTYPES:
        for head_dim in HEAD_DIMS:
            # A fused QKV output: k and v are strided views, as a model hands them over.
            qkv = torch.zeros(5, num_heads + 2 * kv_heads, head_dim, dtype=dtype)
            q, k, v = qkv.split([num_heads, kv_heads, kv_heads], dim=1)
            caches = [torch.zeros(num_blocks, block_size, kv_heads, head_dim, dtype=dtype)
                      for _ in range(2)]
            block_tables = torch.zeros(2, 3, dtype=torch.int32)
            seq_lens = torch.tensor([200, 3], dtype=torch.int32)
            store_kv(k, v, *caches, torch.arange(5, dtype=torch.int64))
            for splits in (1, 2):  # 1: stage 1 writes the output; 2: stage 1 + merge
                paged_decode_attention(q[:2], *caches, block_tables, seq_lens, 0.1, 200, splits)
            paged_prefill_attention(q, *caches, torch.tensor([0, 2, 5], dtype=torch.int32),
                                    seq_lens, block_tables, 3, 0.1)

    compiled = {variant_key(v) for v in kernel_variants()}
    launched = {key for recorder in recorders.values() for key in recorder.launches}
    assert len(launched) == len(compiled) == 60
    assert launched == compiled
