"""`minillm bench serve`: an online serving benchmark in the manner of `vllm bench serve`.

Clients send streamed `/v1/completions` requests (token-id prompts, `ignore_eos`, so each
request generates exactly its output length) at a Poisson `--request-rate`, or all at once under
a `--max-concurrency` cap, and time every chunk:

    TTFT  time to first token        arrival → first text chunk
    ITL   inter-token latency        between two chunks of one request
    TPOT  time per output token      (end-to-end − TTFT) / (output tokens − 1), per request
    E2EL  end-to-end latency         arrival → last chunk

Goodput counts only the requests within every `--goodput` limit (`ttft:500 tpot:50`, in ms).

Without `--base-url` it starts its own server on loopback (`--launch-server`), with the engine
flags given here, and stops it afterwards. `--compare-offline` also runs the very same requests
through `LLM.generate` in this process, before the server starts and after it stops, and
reports the ratio of output-token throughputs: what the HTTP layer costs.

    minillm bench serve --max-concurrency 64 --num-prompts 512 --compare-offline \\
        --save-result --plot serve.png
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from minillm.entrypoints.openai.cli_args import add_engine_arguments, engine_flags

METRICS = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
           "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}


# -- the workload -------------------------------------------------------------------------------
@dataclass
class RequestSpec:
    prompt_token_ids: list[int]
    output_len: int


def make_workload(args: argparse.Namespace, vocab_size: int) -> list[RequestSpec]:
    """Random token prompts (vLLM's "random" dataset). `shared-prefix` puts one of
    `--num-prefixes` random prefixes of `--prefix-len` tokens in front of each prompt."""
    rng = np.random.default_rng(args.seed)

    def lengths(mean: int) -> np.ndarray:
        low = max(1, int(mean * (1 - args.random_range_ratio)))
        return rng.integers(low, int(mean * (1 + args.random_range_ratio)) + 1, args.num_prompts)

    num_prefixes = args.num_prefixes if args.dataset_name == "shared-prefix" else 0
    prefixes = [rng.integers(0, vocab_size, args.prefix_len).tolist() for _ in range(num_prefixes)]
    specs = []
    for i, (n_in, n_out) in enumerate(zip(lengths(args.random_input_len),
                                          lengths(args.random_output_len))):
        prefix = prefixes[i % num_prefixes] if prefixes else []
        specs.append(RequestSpec(prefix + rng.integers(0, vocab_size, n_in).tolist(), int(n_out)))
    return specs


# -- one request --------------------------------------------------------------------------------
@dataclass
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    e2el: float = 0.0
    error: str = ""

    @property
    def tpot(self) -> float | None:
        return (self.e2el - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None


async def send_request(session: aiohttp.ClientSession, url: str, model: str,
                       spec: RequestSpec) -> RequestResult:
    payload = {"model": model, "prompt": spec.prompt_token_ids, "max_tokens": spec.output_len,
               "temperature": 0, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True}}
    result = RequestResult(prompt_len=len(spec.prompt_token_ids))
    start = last = time.perf_counter()
    try:
        async with session.post(f"{url}/v1/completions", json=payload) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return result
            async for line in response.content:  # one SSE line at a time
                if not line.startswith(b"data: {"):
                    continue  # blank separators and the final [DONE]
                chunk = json.loads(line[6:])
                now = time.perf_counter()
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
        result.e2el, result.success = time.perf_counter() - start, True
    except (aiohttp.ClientError, json.JSONDecodeError) as e:
        result.error = f"{type(e).__name__}: {e}"
    return result


# -- the run ------------------------------------------------------------------------------------
async def run_clients(url: str, model: str, specs: list[RequestSpec], request_rate: float,
                      max_concurrency: int | None, seed: int) -> tuple[list[RequestResult], float]:
    """Send every request (Poisson arrivals at `request_rate`/s, or all at once if inf), at
    most `max_concurrency` in flight. Returns the results and the wall time."""
    gate = asyncio.Semaphore(max_concurrency or len(specs))
    rng = np.random.default_rng(seed)
    connector = aiohttp.TCPConnector(limit=max_concurrency or len(specs))
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=auth_headers()) as session:
        async def one(spec: RequestSpec) -> RequestResult:
            async with gate:
                return await send_request(session, url, model, spec)

        await send_request(session, url, model, RequestSpec(specs[0].prompt_token_ids, 4))
        start, tasks = time.perf_counter(), []
        for spec in specs:
            tasks.append(asyncio.create_task(one(spec)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.exponential(1 / request_rate))
        results = await asyncio.gather(*tasks)
    return results, time.perf_counter() - start


def summarize(results: list[RequestResult], duration: float, goodput: dict[str, float]) -> dict:
    ok = [r for r in results if r.success]
    values = {"ttft": [r.ttft for r in ok], "tpot": [r.tpot for r in ok if r.tpot is not None],
              "itl": [x for r in ok for x in r.itl], "e2el": [r.e2el for r in ok]}
    output_tokens = sum(r.output_tokens for r in ok)
    input_tokens = sum(r.prompt_len for r in ok)
    good = [r for r in ok if all(getattr(r, k) is None or getattr(r, k) * 1000 <= limit
                                 for k, limit in goodput.items())]
    summary = {"duration": duration, "completed": len(ok), "failed": len(results) - len(ok),
               "total_input_tokens": input_tokens, "total_output_tokens": output_tokens,
               "request_throughput": len(ok) / duration,
               "request_goodput": len(good) / duration if goodput else None,
               "output_throughput": output_tokens / duration,
               "total_token_throughput": (input_tokens + output_tokens) / duration,
               "errors": sorted({r.error for r in results if r.error})[:5]}
    for name, xs in values.items():
        xs_ms = np.array(xs or [0.0]) * 1000
        summary |= {f"mean_{name}_ms": float(xs_ms.mean()),
                    f"median_{name}_ms": float(np.median(xs_ms)),
                    f"p99_{name}_ms": float(np.percentile(xs_ms, 99))}
    summary["_samples_ms"] = {k: [x * 1000 for x in v] for k, v in values.items()}
    return summary


def run_offline(args: argparse.Namespace, specs: list[RequestSpec]) -> tuple[float, float]:
    """Output tokens/s of `LLM.generate` on the same requests and engine flags, and its CPU
    seconds per 1000 output tokens."""
    from minillm import LLM, SamplingParams

    llm = LLM(args.model, dtype=args.dtype, device=args.device, max_model_len=args.max_model_len,
              block_size=args.block_size, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens,
              enable_prefix_caching=args.enable_prefix_caching,
              attention_backend=args.attention_backend, scheduling_policy=args.scheduling_policy,
              preemption_mode=args.preemption_mode,
              gpu_memory_utilization=args.gpu_memory_utilization,
              kv_cache_memory_bytes=args.kv_cache_memory_bytes,
              num_gpu_blocks_override=args.num_gpu_blocks_override, swap_space=args.swap_space,
              seed=args.seed)
    prompts = [{"prompt_token_ids": s.prompt_token_ids} for s in specs]
    params = [SamplingParams(temperature=0, max_tokens=s.output_len, ignore_eos=True)
              for s in specs]
    llm.generate(prompts[:1], [SamplingParams(max_tokens=4)], use_tqdm=False)  # warm-up
    start, cpu = time.perf_counter(), cpu_seconds()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return tokens / elapsed, 1000 * cpu / tokens


@contextmanager
def launched_server(args: argparse.Namespace):
    """`minillm serve` on a free loopback port with this run's engine flags; yields its URL
    and process id."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "minillm.entrypoints.openai.api_server", "--host",
               "127.0.0.1", "--port", str(port), "--served-model-name", args.served_model_name,
               "--disable-log-requests", "--max-waiting-requests", str(args.num_prompts),
               "--stream-interval", str(args.stream_interval), *engine_flags(args)]
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(60)


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return
        except OSError:  # not listening yet, or 503
            time.sleep(0.5)
    raise RuntimeError(f"the server at {url} did not become healthy")


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system) of a process: this one, or another one (Linux /proc only)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def auth_headers() -> dict:
    """`OPENAI_API_KEY`, as the openai client reads it, for a server started with --api-key."""
    key = os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def served_model(url: str) -> str:
    request = urllib.request.Request(f"{url}/v1/models", headers=auth_headers())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"][0]["id"]


def vocab_size(args: argparse.Namespace) -> int:
    """Prompts are random token ids below the model's vocabulary size (read locally, as
    `vllm bench serve` reads its tokenizer)."""
    from minillm.engine.llm_engine import default_model
    from minillm.model.loader import load_config

    return load_config(args.model or default_model()).vocab_size


def machine() -> str:
    """`lscpu`'s model name and the core count (and the GPU, if any)."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, {platform.system()} {platform.machine()}, " \
           f"Python {platform.python_version()}, torch {torch.__version__}"


def print_report(result: dict) -> None:
    line = lambda label, value: print(f"{label:<42}{value}")
    print("{s:{c}^50}".format(s=" Serving Benchmark Result ", c="="))
    line("Successful requests:", result["completed"])
    line("Failed requests:", result["failed"])
    line("Maximum request concurrency:", result["max_concurrency"])
    line("Benchmark duration (s):", f"{result['duration']:.2f}")
    line("Total input tokens:", result["total_input_tokens"])
    line("Total generated tokens:", result["total_output_tokens"])
    line("Request throughput (req/s):", f"{result['request_throughput']:.2f}")
    if result["request_goodput"] is not None:
        line("Request goodput (req/s):", f"{result['request_goodput']:.2f}")
    line("Output token throughput (tok/s):", f"{result['output_throughput']:.2f}")
    line("Total token throughput (tok/s):", f"{result['total_token_throughput']:.2f}")
    for name, title in METRICS.items():
        print("{s:{c}^50}".format(s=f" {title} ", c="-"))
        for stat in ("mean", "median", "p99"):
            line(f"{stat.capitalize() if stat != 'p99' else 'P99'} {name.upper()} (ms):",
                 f"{result[f'{stat}_{name}_ms']:.2f}")
    if result.get("offline_output_throughput"):
        print("{s:{c}^50}".format(s=" Server vs offline engine ", c="-"))
        line("Offline output throughput (tok/s):", f"{result['offline_output_throughput']:.2f}")
        line("  (runs before and after the server):",
             " / ".join(f"{x:.2f}" for x in result["offline_runs"]))
        line("Server / offline:", f"{result['server_to_offline_ratio']:.3f}")
    print("{s:{c}^50}".format(s=" CPU seconds per 1000 output tokens ", c="-"))
    for side in ("server", "client", "offline"):
        if result.get(f"{side}_cpu_s_per_1k_tokens") is not None:
            line(f"{side.capitalize()}:", f"{result[f'{side}_cpu_s_per_1k_tokens']:.3f}")
    for error in result["errors"]:
        print("error:", error)
    print("=" * 50)


def plot(result: dict, samples: dict, path: Path) -> None:
    """TTFT and TPOT distributions, and the throughputs side by side (matplotlib PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, name in zip(axes, ("ttft", "tpot")):
        ax.hist(samples[name], bins=40, color="tab:blue")
        for stat, style in (("median", "--"), ("p99", ":")):
            ax.axvline(result[f"{stat}_{name}_ms"], color="k", linestyle=style, label=stat)
        ax.set(title=METRICS[name], xlabel="ms", ylabel="requests")
        ax.legend()
    bars = {"server": result["output_throughput"]}
    if result.get("offline_output_throughput"):
        bars["offline LLM.generate"] = result["offline_output_throughput"]
    axes[2].bar(list(bars), list(bars.values()), color=["tab:blue", "tab:gray"][:len(bars)])
    axes[2].set(title="Output tokens/s", ylabel="tokens/s")
    fig.suptitle(f"{result['model_id']}: {result['num_prompts']} requests, concurrency "
                 f"{result['max_concurrency']}, rate {result['request_rate']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("benchmark")
    g.add_argument("--base-url", default=None,
                   help="a running server (default: launch one on loopback)")
    g.add_argument("--launch-server", action="store_true",
                   help="start minillm serve with the engine flags below (default without "
                        "--base-url)")
    g.add_argument("--served-model-name", default="minillm")
    g.add_argument("--stream-interval", type=int, default=1,
                   help="the launched server's --stream-interval")
    g.add_argument("--dataset-name", default="random", choices=["random", "shared-prefix"])
    g.add_argument("--num-prompts", type=int, default=256)
    g.add_argument("--random-input-len", type=int, default=128)
    g.add_argument("--random-output-len", type=int, default=128)
    g.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths uniform in [len * (1 - r), len * (1 + r)]")
    g.add_argument("--prefix-len", type=int, default=256, help="shared-prefix: prefix tokens")
    g.add_argument("--num-prefixes", type=int, default=4, help="shared-prefix: distinct prefixes")
    g.add_argument("--request-rate", type=float, default=float("inf"),
                   help="requests/s, Poisson arrivals (default inf: all at once)")
    g.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most")
    g.add_argument("--goodput", nargs="+", default=[], metavar="METRIC:MS",
                   help="latency limits for goodput, e.g. ttft:500 tpot:50 (ms)")
    g.add_argument("--compare-offline", action="store_true",
                   help="also run the same requests through LLM.generate and report the ratio")
    g.add_argument("--save-result", action="store_true", help="write the result as JSON")
    g.add_argument("--result-dir", type=Path, default=Path("."))
    g.add_argument("--result-filename", default=None)
    g.add_argument("--plot", type=Path, default=None, help="write a PNG of the distributions")
    add_engine_arguments(parser)


def parse_goodput(items: list[str]) -> dict[str, float]:
    limits = {}
    for item in items:
        name, _, ms = item.partition(":")
        if name not in ("ttft", "tpot", "e2el") or not ms:
            raise SystemExit(f"--goodput takes ttft:MS, tpot:MS or e2el:MS, not {item!r}")
        limits[name] = float(ms)
    return limits


def main(args: argparse.Namespace) -> dict:
    goodput = parse_goodput(args.goodput)
    specs = make_workload(args, vocab_size(args))
    # The offline runs go before and after the server's, each with the machine to itself (and
    # a fresh engine, so no prefix cache carries over): their mean evens out background load
    # that drifts during the run.
    offline = [run_offline(args, specs)] if args.compare_offline else []
    launch = args.launch_server or args.base_url is None
    with launched_server(args) if launch else _given(args.base_url) as (url, pid):
        model = served_model(url)
        server_cpu = cpu_seconds(pid) if pid else None  # only a server launched here
        client_cpu = cpu_seconds()
        results, duration = asyncio.run(run_clients(url, model, specs, args.request_rate,
                                                    args.max_concurrency, args.seed))
        client_cpu = cpu_seconds() - client_cpu
        if server_cpu is not None:
            server_cpu = cpu_seconds(pid) - server_cpu
    offline += [run_offline(args, specs)] if args.compare_offline else []
    result = summarize(results, duration, goodput)
    samples = result.pop("_samples_ms")
    per_1k = 1000 / max(1, result["total_output_tokens"])
    result |= {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
               "model_id": args.model or "minillm-tiny", "num_prompts": args.num_prompts,
               "request_rate": args.request_rate, "max_concurrency": args.max_concurrency,
               "goodput_limits_ms": goodput, "engine_flags": engine_flags(args),
               "stream_interval": args.stream_interval if launch else None,
               # CPU seconds per 1000 output tokens: what each side costs, whatever else runs
               "server_cpu_s_per_1k_tokens": server_cpu * per_1k if server_cpu else None,
               "client_cpu_s_per_1k_tokens": client_cpu * per_1k}
    if offline:
        speeds = [speed for speed, _ in offline]
        result["offline_runs"] = speeds
        result["offline_output_throughput"] = sum(speeds) / len(speeds)
        result["offline_cpu_s_per_1k_tokens"] = sum(c for _, c in offline) / len(offline)
        result["server_to_offline_ratio"] = (result["output_throughput"]
                                             / result["offline_output_throughput"])
    print_report(result)
    _save(args, result, samples)
    return result


def _save(args: argparse.Namespace, result: dict, samples: dict) -> None:
    if args.save_result:
        name = args.result_filename or (f"serve-{args.max_concurrency or 'inf'}c-"
                                        f"{time.strftime('%Y%m%d-%H%M%S')}.json")
        path = args.result_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result | {"samples_ms": samples}, indent=2))
        print(f"result written to {path}")
    if args.plot:
        plot(result, samples, args.plot)
        print(f"plot written to {args.plot}")


@contextmanager
def _given(url: str):
    yield url.rstrip("/"), None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m minillm.bench.serve")
    add_arguments(parser)
    main(parser.parse_args())
