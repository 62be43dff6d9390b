"""`python -m minillm.bench.memory`: KV memory waste, contiguous vs paged, on one seeded trace.

Replays a ShareGPT-like trace (see `minillm.memory.trace`) through a contiguous max-length
allocator (first fit and best fit) and through minillm's paged `BlockManager`, all with the same
KV budget, and prints where the memory went and how many requests ran at once.
"""
from __future__ import annotations

import argparse
import platform
import time

from minillm.memory.trace import compare, figures, sharegpt_like_trace

NUM_REQUESTS = 1000
SEED = 0
ARRIVAL_RATE = 0.5  # requests per engine step: a queue forms, the server is under load
CAPACITY = 32768  # token slots, e.g. 4 GiB of KV for Llama-3-8B in fp16 (128 KiB a token)
BLOCK_SIZE = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-requests", type=int, default=NUM_REQUESTS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--arrival-rate", type=float, default=ARRIVAL_RATE)
    parser.add_argument("--capacity", type=int, default=CAPACITY, help="KV budget in token slots")
    parser.add_argument("--block-size", type=int, default=BLOCK_SIZE)


def main(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    trace = sharegpt_like_trace(args.num_requests, args.seed, args.arrival_rate)
    results = compare(trace, args.capacity, block_size=args.block_size)
    elapsed = time.perf_counter() - start
    print(f"KV memory replay: {len(trace)} requests (seed {args.seed}), "
          f"{args.capacity} token slots, block size {args.block_size}")
    print("shares of the KV memory in use, averaged over the steps when requests waited:\n")
    print(figures(results))
    paged = results["paged"].summary()
    print()
    for name in ("first_fit", "best_fit"):
        s = results[name].summary()
        print(f"{name:9}: real tokens fill {100 * s['token_share']:.1f}% of the memory in use; "
              f"paged runs {paged['mean_running'] / s['mean_running']:.2f}x as many requests "
              f"at once and serves the trace in {paged['makespan_steps'] / s['makespan_steps']:.2f}x "
              "the steps")
    print(f"paged    : waste {100 * paged['waste_share']:.2f}% of the memory in use "
          f"(only the tail of each request's last block), {paged['preemptions']} preemptions")
    print(f"\nmachine: {platform.machine()}, Python {platform.python_version()}, "
          f"replay took {elapsed:.1f} s")
    return {name: res.summary() for name, res in results.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m minillm.bench.memory", description=__doc__)
    add_arguments(parser)
    main(parser.parse_args())
