"""The server's flags, with vLLM's names, so a command line (or a KServe ServingRuntime) written
for `vllm serve` / `python -m vllm.entrypoints.openai.api_server` runs minillm unchanged."""
from __future__ import annotations

import argparse
from dataclasses import fields

from minillm.config import EngineConfig
from minillm.entrypoints.openai.tool_parsers import TOOL_CALL_PARSERS

# vLLM flags that make no difference to minillm (one process, one device, no compilation):
# accepted so that existing command lines keep working, and otherwise ignored.
IGNORED_FLAGS = ["--trust-remote-code", "--enforce-eager", "--disable-log-stats",
                 "--disable-frontend-multiprocessing"]
FLAG_TYPES = {"str": str, "int": int, "float": float, "bool": bool}  # by EngineConfig annotation


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine's flags, one per field of `EngineConfig` (shared by `minillm serve` and
    `minillm bench serve`)."""
    g = parser.add_argument_group("engine")
    for f in fields(EngineConfig):
        flag, kind = "--" + f.name.replace("_", "-"), FLAG_TYPES[f.type.split(" |")[0]]
        if kind is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                           help=f.metadata["help"])
        else:
            g.add_argument(flag, type=kind, default=f.default, choices=f.metadata["choices"],
                           help=f.metadata["help"])
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, choices=[1],
                   help="minillm runs on one device")
    for flag in IGNORED_FLAGS:
        g.add_argument(flag, action="store_true", help="accepted for vLLM compatibility; no effect")


def engine_flags(args: argparse.Namespace) -> list[str]:
    """The engine flags of `args` that differ from their defaults, as a command line again
    (so `minillm bench serve` can start a server with the engine it was given)."""
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    flags = []
    for dest, default in vars(parser.parse_args([])).items():
        value = getattr(args, dest, default)
        if value == default:
            continue
        flag = "--" + dest.replace("_", "-")  # every engine flag is named after its dest
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags += [flag, str(value)]
    return flags


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                        help="checkpoint folder (same as --model)")
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="0.0.0.0")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--served-model-name", nargs="+", default=None,
                   help="name(s) clients use in `model` (default: the --model folder's name)")
    g.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on /v1 endpoints (better: the "
                        "MINILLM_API_KEY or VLLM_API_KEY environment variable, which `ps` does "
                        "not show)")
    g.add_argument("--max-waiting-requests", type=int, default=1024,
                   help="answer 429 beyond this many sequences (n per prompt) waiting for "
                        "their first token")
    g.add_argument("--max-request-body-bytes", type=int, default=10 * 2**20,
                   help="answer 413 to a larger request body (default 10 MiB)")
    g.add_argument("--header-read-timeout", type=float, default=10.0,
                   help="seconds a client has to send a request's headers before its "
                        "connection is closed")
    g.add_argument("--limit-concurrency", type=int, default=None,
                   help="uvicorn answers 503 beyond this many connections and in-flight requests")
    g.add_argument("--stream-interval", type=int, default=1,
                   help="send a streamed chunk every N tokens (the first and last at once)")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for in-flight requests before aborting them")
    g.add_argument("--uvicorn-log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
    g.add_argument("--disable-log-requests", action="store_true",
                   help="no log line per request")
    g.add_argument("--enable-auto-tool-choice", action="store_true",
                   help='let the model decide when to call tools (`tool_choice: "auto"`); needs '
                        "--tool-call-parser")
    g.add_argument("--tool-call-parser", default=None, choices=TOOL_CALL_PARSERS,
                   help="how tool calls are found in the model's text with "
                        '`tool_choice: "auto"` (hermes: <tool_call>{...}</tool_call> blocks)')
    g.add_argument("--disable-dashboard", action="store_true",
                   help="no /dashboard page (a read-only live view of the KV blocks and "
                        "queues, behind --api-key when one is set); for production")
    add_engine_arguments(parser)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    settings = {f.name: getattr(args, f.name) for f in fields(EngineConfig)}
    settings["model"] = getattr(args, "model_tag", None) or args.model
    return EngineConfig(**settings)
