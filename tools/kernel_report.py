"""Print registers, spills and shared memory of every Triton kernel variant, for H100 and A100.

No GPU needed: each variant the Triton backend can launch (see `minillm_kernels.variants`) is
compiled with Triton's bundled `ptxas`, whose verbose log gives registers per thread and spill
bytes; Triton's metadata gives the shared memory per block. The output is a Markdown table
(docs/kernels.md shows one).

    python tools/kernel_report.py                       # everything, both GPUs (~1 minute)
    python tools/kernel_report.py --gpus H100 --head-dims 128 --dtypes fp16

Run it without TRITON_INTERPRET (the interpreter does not compile).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys


def machine_line() -> str:
    import triton

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"Triton {triton.__version__} with its bundled ptxas, on {cpu} "
            f"({os.cpu_count()} cores), {platform.system()} {platform.release()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", default="H100,A100", help="comma-separated: H100, A100")
    parser.add_argument("--head-dims", default=None, help="comma-separated, e.g. 64,128")
    parser.add_argument("--dtypes", default=None, help="comma-separated: fp16, bf16, fp32")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter does not compile kernels")

    from minillm_kernels.common import DTYPES, HEAD_DIMS
    from minillm_kernels.variants import (GPU_TARGETS, TRITON_DTYPE, compile_report,
                                          kernel_variants)

    gpus = args.gpus.split(",")
    unknown = [g for g in gpus if g not in GPU_TARGETS]
    if unknown:
        parser.error(f"unknown GPU {unknown}: choose from {sorted(GPU_TARGETS)}")
    head_dims = [int(d) for d in args.head_dims.split(",")] if args.head_dims else HEAD_DIMS
    by_name = {name: dtype for dtype, name in TRITON_DTYPE.items()}
    dtypes = [by_name[d] for d in args.dtypes.split(",")] if args.dtypes else DTYPES
    variants = kernel_variants(head_dims, dtypes)

    reports = {}
    for gpu in gpus:
        capability, _ = GPU_TARGETS[gpu]
        print(f"compiling {len(variants)} variants for {gpu} (sm_{capability})...",
              file=sys.stderr, flush=True)
        reports[gpu] = compile_report(capability, variants)

    print(f"Compiled with {machine_line()}.\n")
    header = "| variant | warps |" + "".join(
        f" {gpu} regs | {gpu} spills (B) | {gpu} shared (KiB) |" for gpu in gpus)
    print(header)
    print("|" + "---|" * (2 + 3 * len(gpus)))
    for i, variant in enumerate(variants):
        cells = [variant.name, str(variant.num_warps)]
        for gpu in gpus:
            row = reports[gpu][i]
            cells += [str(row["registers"]), str(row["spill_stores"] + row["spill_loads"]),
                      f"{row['shared'] / 1024:.1f}"]
        print("| " + " | ".join(cells) + " |")
    seconds = {gpu: sum(r["seconds"] for r in rows) for gpu, rows in reports.items()}
    print("\nCompile time: " + ", ".join(f"{gpu} {s:.0f} s" for gpu, s in seconds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
