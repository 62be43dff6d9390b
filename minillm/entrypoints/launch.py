"""`minillm launch --replicas N --router-policy P`: N servers behind vLLM's router, on one machine.

    client ──► vllm-router :8000 ──┬──► minillm serve :8001   (each replica: its own engine,
          (round_robin, cache_aware,├──► minillm serve :8002    its own KV cache and prefix
           kv_aware, ...)           └──► ...                     cache, its own /metrics)

The router is `vllm-router` (the vLLM project's, in Rust; `pip install 'minillm[cluster]'`); it
routes to minillm unchanged because minillm answers what it asks of a worker (/health,
/v1/models, /get_load, /get_server_info, /metrics). The same router runs in Kubernetes with
`--service-discovery` instead of a list of URLs: see docs/deploy.md.

With `--router-policy kv_aware` each replica also publishes its prefix cache's changes (vLLM's
KV-cache events, `--kv-events-config`) on a ZeroMQ port of its own, and the router subscribes to
each (`--kv-event-source URL=tcp://HOST:PORT`): it routes a request to the replica that holds the
longest prefix of its tokens, as the replicas themselves reported it.

Start-up waits until every replica answers /health, then starts the router and waits for it.
Ctrl+C or SIGTERM stops the router first (no new requests), then the replicas, which drain their
in-flight requests (--shutdown-timeout), and kills what is still there after that.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from minillm.entrypoints.openai.cli_args import add_engine_arguments, engine_flags

POLICIES = ["round_robin", "random", "cache_aware", "kv_aware", "power_of_two",
            "consistent_hash"]


@dataclass
class Process:
    """A child process and the loopback URL it serves."""
    name: str
    url: str
    popen: subprocess.Popen

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def router_binary() -> str:
    """`vllm-router` beside this Python (a virtualenv that is not activated), else on PATH."""
    beside = Path(sys.executable).with_name("vllm-router")
    found = str(beside) if beside.exists() else shutil.which("vllm-router")
    if found is None:
        raise SystemExit("vllm-router is not installed: pip install 'minillm[cluster]'")
    return found


def start_replica(port: int, server_flags: list[str], host: str = "127.0.0.1",
                  threads: int | None = None, log=None) -> Process:
    """`minillm serve` on host:port. `threads` caps PyTorch's threads (OMP_NUM_THREADS), so that
    replicas sharing one machine's cores do not fight over all of them."""
    env = dict(os.environ)
    if threads and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "minillm.entrypoints.openai.api_server", "--host", host,
               "--port", str(port), *server_flags]
    popen = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
    return Process(f"replica :{port}", f"http://{host}:{port}", popen)


def start_router(worker_urls: list[str], policy: str, port: int, host: str = "127.0.0.1",
                 extra: list[str] = (), log=None) -> Process:
    """vllm-router in front of `worker_urls`. Its Prometheus exporter gets a free port of its
    own (its default, 29000, would clash between two routers)."""
    command = [router_binary(), "--host", host, "--port", str(port), "--policy", policy,
               "--worker-urls", *worker_urls, "--prometheus-port", str(free_port()), *extra]
    popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT if log else None)
    return Process(f"router :{port}", f"http://{host}:{port}", popen)


def kv_events_config(port: int) -> str:
    """A replica's `--kv-events-config`: publish on `port` (a `*` host: vLLM's rule to bind)."""
    return json.dumps({"enable_kv_cache_events": True, "publisher": "zmq",
                       "endpoint": f"tcp://*:{port}"})


def kv_event_sources(replica_urls: list[str], event_ports: list[int], host: str,
                     block_size: int, model: str) -> list[str]:
    """vllm-router's kv_aware flags: where each replica publishes, its block size, the model."""
    flags = []
    for url, port in zip(replica_urls, event_ports):
        flags += ["--kv-event-source", f"{url}=tcp://{host}:{port}"]
    return flags + ["--kv-event-block-size", str(block_size), "--kv-event-model", model]


def wait_healthy(processes: list[Process], timeout: float) -> None:
    """Until each answers GET /health with 200; a process that exits meanwhile is an error."""
    deadline = time.monotonic() + timeout
    waiting = list(processes)
    while waiting:
        for p in list(waiting):
            if not p.alive:
                raise RuntimeError(f"{p.name} exited during start-up (code {p.popen.returncode})")
            try:
                with urllib.request.urlopen(f"{p.url}/health", timeout=2) as response:
                    if response.status == 200:
                        waiting.remove(p)
            except OSError:  # not listening yet, or 503
                pass
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"not healthy after {timeout:.0f} s: "
                               f"{', '.join(p.name for p in waiting)}")
        time.sleep(0.3)


def stop(processes: list[Process], timeout: float) -> None:
    """SIGTERM to each (in the order given), then wait; SIGKILL what is left after `timeout`."""
    for p in processes:
        if p.alive:
            p.popen.terminate()
    deadline = time.monotonic() + timeout
    for p in processes:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster")
    g.add_argument("--replicas", type=int, default=2, help="minillm servers to start")
    g.add_argument("--router-policy", default="cache_aware", choices=POLICIES,
                   help="vllm-router's --policy")
    g.add_argument("--host", default="127.0.0.1", help="where the router and replicas listen")
    g.add_argument("--port", type=int, default=8000, help="the router's port")
    g.add_argument("--replica-port", type=int, default=None,
                   help="the first replica's port; the others follow (default: --port + 1)")
    g.add_argument("--router-args", default="",
                   help="more vllm-router flags, one string, e.g. "
                        "'--health-check-interval-secs 5'")
    g.add_argument("--threads-per-replica", type=int, default=None,
                   help="OMP_NUM_THREADS of each replica (default: the cores / replicas)")
    g.add_argument("--served-model-name", default="minillm")
    g.add_argument("--startup-timeout", type=float, default=300.0)
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds the replicas get to drain on Ctrl+C / SIGTERM")
    add_engine_arguments(parser)


def main(args: argparse.Namespace) -> None:
    if args.replicas < 1:
        raise SystemExit("--replicas must be at least 1")
    threads = args.threads_per_replica or max(1, (os.cpu_count() or 1) // args.replicas)
    first = args.replica_port or args.port + 1
    server_flags = ["--served-model-name", args.served_model_name, "--shutdown-timeout",
                    str(args.shutdown_timeout), *engine_flags(args)]
    kv_aware = args.router_policy == "kv_aware"
    event_ports = [free_port() for _ in range(args.replicas)] if kv_aware else []
    replicas = []
    for i in range(args.replicas):
        events = ["--kv-events-config", kv_events_config(event_ports[i])] if kv_aware else []
        replicas.append(start_replica(first + i, server_flags + events, args.host, threads))
    router_flags = shlex.split(args.router_args)
    if kv_aware:
        router_flags += kv_event_sources([r.url for r in replicas], event_ports, args.host,
                                         args.block_size, args.served_model_name)
    children = list(replicas)

    def on_signal(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping now: a second signal waits
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        wait_healthy(replicas, args.startup_timeout)
        router = start_router([r.url for r in replicas], args.router_policy, args.port,
                              args.host, router_flags)
        children.insert(0, router)  # stopped first: no new requests while replicas drain
        wait_healthy([router], args.startup_timeout)
        print(f"minillm launch: {args.replicas} replicas ({', '.join(r.url for r in replicas)}) "
              f"behind vllm-router {router.url} ({args.router_policy}); Ctrl+C stops them",
              flush=True)
        while router.alive:
            time.sleep(0.5)
        print(f"minillm launch: the router exited (code {router.popen.returncode})", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        stop(children, args.shutdown_timeout + 5)
    print("minillm launch: stopped", flush=True)
