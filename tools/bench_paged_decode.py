"""Benchmark paged decode attention on an NVIDIA GPU: achieved memory bandwidth.

Decode attention reads every cached key and value once per step and does little arithmetic, so
its speed limit is memory bandwidth. This script times one decode step (one query token per
sequence) of the Triton backend and of the torch reference backend over batch x context sizes,
and reports the bandwidth each achieves: bytes of K/V (+ queries and outputs) divided by time.

    python tools/bench_paged_decode.py                         # the default sweep
    python tools/bench_paged_decode.py --batch 64 --context 4096 --splits 1,2,4
    python tools/bench_paged_decode.py --peak-gbps 3350        # if your GPU is not recognised

The goal: at least 60 % of peak HBM bandwidth on an H100 for batch 64 x 4k-token contexts with
GQA (32 query heads, 8 KV heads, head dim 128, fp16) - the default shape. Each context is laid
into shuffled physical blocks, as a long-running server's cache would be. Timing uses
`triton.testing.do_bench` (median of many runs, L2 flushed between them).

Needs a CUDA GPU; it refuses to run otherwise (the interpreter would only measure Python).
"""
from __future__ import annotations

import argparse
import os
import sys

# Peak HBM bandwidth in GB/s by device-name fragment (first match wins); --peak-gbps overrides.
PEAK_GBPS = [("H200", 4800), ("H100 PCIe", 2000), ("H100", 3350), ("A100-SXM4-80GB", 2039),
             ("A100 80GB PCIe", 1935), ("A100", 1555), ("L40S", 864), ("A10G", 600),
             ("RTX 4090", 1008), ("RTX 3090", 936)]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=ints, default=[1, 8, 64, 128])
    parser.add_argument("--context", type=ints, default=[512, 1024, 4096, 8192])
    parser.add_argument("--num-heads", type=int, default=32)
    parser.add_argument("--num-kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    parser.add_argument("--splits", default="auto",
                        help="'auto' (the backend's heuristic) or a comma-separated list to sweep")
    parser.add_argument("--peak-gbps", type=float, default=None,
                        help="peak memory bandwidth of your GPU, GB/s (default: looked up)")
    parser.add_argument("--skip-torch", action="store_true", help="time the Triton kernel only")
    return parser.parse_args(argv)


def refuse_without_cuda() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("bench_paged_decode: TRITON_INTERPRET=1 is set; the interpreter runs kernels in "
                 "Python on the CPU, so its timings mean nothing. Unset it and use a CUDA GPU.")
    import torch
    if not torch.cuda.is_available():
        sys.exit("bench_paged_decode: no CUDA GPU found. This benchmark measures GPU memory "
                 "bandwidth and needs an NVIDIA GPU with a CUDA build of torch; on a CPU run the "
                 "kernel tests instead (make test-kernels).")


def make_step(batch: int, context: int, args, dtype):
    """Caches holding `batch` contexts of `context` tokens in shuffled blocks; one query each."""
    import torch

    from minillm.attention.base import AttentionMetadata

    blocks_per_seq = -(-context // args.block_size)
    num_blocks = batch * blocks_per_seq
    shape = (num_blocks, args.block_size, args.num_kv_heads, args.head_dim)
    k_cache = torch.randn(shape, dtype=dtype, device="cuda")
    v_cache = torch.randn(shape, dtype=dtype, device="cuda")
    block_tables = torch.randperm(num_blocks, device="cuda").to(torch.int32).view(batch, -1)
    q = torch.randn(batch, args.num_heads, args.head_dim, dtype=dtype, device="cuda")
    kv = torch.empty(batch, args.num_kv_heads, args.head_dim, dtype=dtype, device="cuda")
    meta = AttentionMetadata(
        slot_mapping=torch.full((batch,), -1, dtype=torch.int64, device="cuda"),  # store nothing
        query_start_loc=torch.arange(batch + 1, dtype=torch.int32, device="cuda"),
        seq_lens=torch.full((batch,), context, dtype=torch.int32, device="cuda"),
        block_tables=block_tables, max_query_len=1, max_seq_len=context)
    return q, kv, k_cache, v_cache, meta


def main(argv=None) -> int:
    args = parse_args(argv)
    refuse_without_cuda()

    import torch
    import triton.testing

    from minillm.attention.torch_backend import TorchAttentionBackend
    from minillm.attention.triton_backend import TritonAttentionBackend

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    name = torch.cuda.get_device_name()
    peak = args.peak_gbps or next((gbps for key, gbps in PEAK_GBPS if key in name), None)
    scale = args.head_dim ** -0.5
    print(f"{name}; peak {peak or '?'} GB/s; {args.num_heads} q heads, {args.num_kv_heads} kv "
          f"heads, dim {args.head_dim}, {args.dtype}, block size {args.block_size}\n")
    print("| batch | context | splits | triton us | triton GB/s | % of peak | torch us "
          "| torch GB/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")

    for batch in args.batch:
        for context in args.context:
            q, kv, k_cache, v_cache, meta = make_step(batch, context, args, dtype)
            # Bytes that must move: K and V of every context token read, q read, out written.
            elements = 2 * batch * context * args.num_kv_heads * args.head_dim + 2 * q.numel()
            moved = elements * q.element_size()
            if args.splits == "auto":
                splits = [TritonAttentionBackend.pick_num_splits(q, k_cache, meta)]
            else:
                splits = ints(args.splits)

            torch_us = None
            if not args.skip_torch:
                reference = TorchAttentionBackend()
                expected = reference.forward(q, kv, kv, k_cache, v_cache, meta, scale)
                torch_us = 1e3 * triton.testing.do_bench(
                    lambda: reference.forward(q, kv, kv, k_cache, v_cache, meta, scale))
            for num_splits in splits:
                backend = TritonAttentionBackend(num_kv_splits=num_splits)
                out = backend.forward(q, kv, kv, k_cache, v_cache, meta, scale)
                if not args.skip_torch:
                    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
                triton_us = 1e3 * triton.testing.do_bench(
                    lambda: backend.forward(q, kv, kv, k_cache, v_cache, meta, scale))
                gbps = moved / triton_us / 1e3
                percent = f"{100 * gbps / peak:.0f} %" if peak else "?"
                torch_cells = ("- | - | -" if torch_us is None else
                               f"{torch_us:.0f} | {moved / torch_us / 1e3:.0f} | "
                               f"{torch_us / triton_us:.1f}x")
                print(f"| {batch} | {context} | {num_splits} | {triton_us:.1f} | {gbps:.0f} "
                      f"| {percent} | {torch_cells} |", flush=True)
            del q, kv, k_cache, v_cache, meta
            torch.cuda.empty_cache()
    print("\nGoal: >= 60 % of peak for batch 64 x context 4096 with the default shape on an H100.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
