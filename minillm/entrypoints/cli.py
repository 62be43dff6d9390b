"""`minillm serve ...`, `minillm bench throughput ...`, `minillm bench serve ...`.

Each command lives in its own module, which adds its flags (`add_arguments`) and runs (`main`).
"""
from __future__ import annotations

import argparse
import importlib

COMMANDS = {
    "serve": "minillm.entrypoints.openai.api_server",
    "bench throughput": "minillm.bench.throughput",
    "bench serve": "minillm.bench.serve",
    "bench memory": "minillm.bench.memory",
    "bench latency": "minillm.bench.latency",
    "bench accuracy": "minillm.bench.accuracy",
    "bench structured": "minillm.bench.structured",
    "bench peers": "minillm.bench.peers",
    "launch": "minillm.entrypoints.launch",
    "plan": "minillm.bench.plan",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minillm", description="A compact LLM serving engine.")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench",
                                                                           required=True)
    for name, module in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        command = importlib.import_module(module)
        summary = (command.__doc__ or module).strip().splitlines()[0]
        sub = (bench if group else commands).add_parser(leaf, help=summary, description=summary)
        command.add_arguments(sub)
        sub.set_defaults(module=module)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    importlib.import_module(args.module).main(args)


if __name__ == "__main__":
    main()
