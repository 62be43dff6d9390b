"""The server's flags, with vLLM's names, so a command line (or a KServe ServingRuntime) written
for `vllm serve` / `python -m vllm.entrypoints.openai.api_server` runs minillm unchanged."""
from __future__ import annotations

import argparse

from minillm.attention import BACKEND_NAMES
from minillm.config import EngineConfig, SchedulerConfig

# vLLM flags that make no difference to minillm (one process, one device, no compilation):
# accepted so that existing command lines keep working, and otherwise ignored.
IGNORED_FLAGS = ["--trust-remote-code", "--enforce-eager", "--disable-log-stats",
                 "--disable-frontend-multiprocessing"]


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine's flags (shared by `minillm serve` and `minillm bench serve`)."""
    g = parser.add_argument_group("engine")
    g.add_argument("--model", default=None,
                   help="Hugging Face checkpoint folder (default: the bundled minillm-tiny)")
    g.add_argument("--dtype", default="auto",
                   choices=["auto", "float32", "float16", "bfloat16", "half", "float"],
                   help="weights and KV cache (auto: float32 on CPU, float16 on GPU)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--max-model-len", type=int, default=None,
                   help="prompt + output tokens (default: the model's, at most 4096)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="share of GPU memory for weights and KV cache")
    g.add_argument("--kv-cache-memory-bytes", type=int, default=None,
                   help="KV cache size in bytes (CPU default: 1 GiB)")
    g.add_argument("--num-gpu-blocks-override", type=int, default=None,
                   help="exact number of KV blocks")
    g.add_argument("--swap-space", type=float, default=1.0,
                   help="GiB of CPU memory for preempted sequences (--preemption-mode swap)")
    g.add_argument("--max-num-seqs", type=int, default=256, help="sequences running at once")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="tokens in one forward pass")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                   default=True, help="reuse the KV blocks of shared prompt prefixes")
    g.add_argument("--scheduling-policy", default="fcfs", choices=["fcfs", "priority"])
    g.add_argument("--preemption-mode", default="recompute", choices=["recompute", "swap"])
    g.add_argument("--attention-backend", default="auto", choices=BACKEND_NAMES)
    g.add_argument("--seed", type=int, default=0)
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
    add_engine_arguments(parser)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    scheduler = SchedulerConfig(args.max_num_seqs, args.max_num_batched_tokens,
                                args.scheduling_policy, args.preemption_mode)
    dtype = {"half": "float16", "float": "float32"}.get(args.dtype, args.dtype)
    return EngineConfig(
        model=getattr(args, "model_tag", None) or args.model, dtype=dtype, device=args.device,
        max_model_len=args.max_model_len, block_size=args.block_size,
        enable_prefix_caching=args.enable_prefix_caching,
        attention_backend=args.attention_backend,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        num_gpu_blocks_override=args.num_gpu_blocks_override, swap_space=args.swap_space,
        seed=args.seed, scheduler=scheduler)
