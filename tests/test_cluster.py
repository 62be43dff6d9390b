"""Two minillm replicas behind vLLM's router (vllm-router), on loopback.

* Routing decides what the prefix caches hold. 8 system prompts x 16 users, in a shuffled order,
  through the official openai client. Each replica's KV cache holds about half of the system
  prompts. round_robin sends every prompt to both replicas, so each one cycles all 8 through a
  cache that holds 4, and evicts before it reuses; cache_aware sends each prompt to one replica,
  so each holds its half. The summed hit rate read from the replicas' /metrics must be clearly
  higher with cache_aware.
* A replica that dies mid-run costs no request: the router retries on the other one, and no
  request hangs (every request has a deadline).

The replicas start once, as `minillm launch --replicas 2` starts them, and the last test stops
them as an operator does: SIGTERM to the launcher, after which no process may be left. Each
phase uses its own system prompts, so what one phase cached cannot help the next, and hit rates
are differences of the counters over a phase.
"""
from __future__ import annotations

import contextlib
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from minillm.entrypoints.launch import Process, free_port, start_router, stop, wait_healthy

pytestmark = pytest.mark.timeout(600)  # whatever hangs, the suite goes on

NUM_SYSTEM_PROMPTS, NUM_USERS = 8, 16
CONCURRENCY = 4
REQUEST_DEADLINE = 30.0  # seconds: a request that takes longer counts as hung
# A system prompt is ~220 tokens: 13 full blocks of 16. 80 blocks hold 4 or 5 of them beside the
# running requests, so one replica holds half of the 8 prompts, not all of them.
ENGINE_FLAGS = ["--num-gpu-blocks-override", "80", "--max-model-len", "512", "--max-num-seqs", "8"]
ROUTER_FLAGS = ["--health-check-interval-secs", "1", "--health-failure-threshold", "1",
                "--retry-initial-backoff-ms", "20", "--retry-max-backoff-ms", "200",
                "--worker-startup-check-interval", "1", "--log-level", "warning"]


@dataclass
class Replica:
    url: str
    pid: int

    @property
    def alive(self) -> bool:
        try:  # a killed child stays a zombie ("Z") until minillm launch reaps it
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False


def child_pids(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def pid_serving(parent: int, port: int) -> int:
    """The child of `parent` started with `--port PORT`."""
    for pid in child_pids(parent):
        if f"\0--port\0{port}\0" in Path(f"/proc/{pid}/cmdline").read_text():
            return pid
    raise LookupError(f"no child of {parent} serves port {port}")


def two_free_ports() -> int:
    """A port whose next port is free too (minillm launch numbers its replicas so)."""
    while True:
        first = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", first + 1))
                return first
            except OSError:
                continue


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """`minillm launch --replicas 2` in a subprocess (its own router: round_robin); yields the
    launcher and its replicas. The last test stops it with SIGTERM; if a test failed before,
    this does, and kills what is left."""
    port, first = free_port(), two_free_ports()
    command = [sys.executable, "-m", "minillm.entrypoints.cli", "launch", "--replicas", "2",
               "--port", str(port), "--replica-port", str(first), "--router-policy",
               "round_robin", "--threads-per-replica", "1", "--router-args",
               shlex.join(ROUTER_FLAGS), *ENGINE_FLAGS]
    log = tmp_path_factory.mktemp("cluster") / "launch.log"
    launch = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_healthy([Process("minillm launch", f"http://127.0.0.1:{port}", launch)], 180)
        yield launch, [Replica(f"http://127.0.0.1:{first + i}", pid_serving(launch.pid, first + i))
                       for i in range(2)]
    finally:
        if launch.poll() is None:
            children = child_pids(launch.pid)
            launch.terminate()
            try:
                launch.wait(60)
            except subprocess.TimeoutExpired:
                for pid in [launch.pid, *children]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def replicas(launched):
    return launched[1]


def router(replicas, policy: str, tmp_path):
    process = start_router([r.url for r in replicas], policy, free_port(), extra=ROUTER_FLAGS,
                           log=open(tmp_path / f"router-{policy}.log", "w"))
    wait_healthy([process], timeout=30)
    return process


def workload(seed: int) -> list[str]:
    """8 system prompts of ~220 tokens (the bundled model's tokenizer) x 16 users' questions,
    shuffled. Words, not random ids: the router's cache_aware matches prompts as text."""
    rng = random.Random(seed)
    words = ("the a of house letter morning walk garden sister brother evening ball dinner "
             "visit carriage friend family town village weather road river field").split()
    systems = [f"System {seed}-{i}: " + " ".join(rng.choice(words) for _ in range(190))
               for i in range(NUM_SYSTEM_PROMPTS)]
    prompts = [f"{s}\nUser {u}: where is the {rng.choice(words)}?\nAnswer:"
               for s in systems for u in range(NUM_USERS)]
    rng.shuffle(prompts)
    return prompts


def prefix_counters(replicas) -> tuple[float, float]:
    """(hits, queries) in tokens, summed over the replicas' /metrics."""
    hits = queries = 0.0
    for r in replicas:
        for line in httpx.get(f"{r.url}/metrics", timeout=5).text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.split()[-1])
            elif line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.split()[-1])
    return hits, queries


def send_all(url: str, prompts: list[str], on_done=None) -> list[tuple[bool, float, str]]:
    """Each prompt through the openai client, CONCURRENCY at once: (ok, seconds, error)."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                           timeout=REQUEST_DEADLINE)

    def one(prompt: str) -> tuple[bool, float, str]:
        start = time.monotonic()
        try:
            out = client.completions.create(model="minillm", prompt=prompt, max_tokens=2,
                                            temperature=0)
            ok, error = out.usage.completion_tokens == 2, ""
        except openai.OpenAIError as e:
            ok, error = False, f"{type(e).__name__}: {e}"
        if on_done:
            on_done()
        return ok, time.monotonic() - start, error

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(one, prompts))


def hit_rate(replicas, url: str, prompts: list[str]) -> float:
    hits, queries = prefix_counters(replicas)
    results = send_all(url, prompts)
    assert all(ok for ok, _, _ in results), [e for ok, _, e in results if not ok][:3]
    new_hits, new_queries = prefix_counters(replicas)
    return (new_hits - hits) / (new_queries - queries)


def test_cache_aware_routing_raises_the_prefix_cache_hit_rate(replicas, tmp_path):
    rates = {}
    for seed, policy in enumerate(["round_robin", "cache_aware"]):
        process = router(replicas, policy, tmp_path)
        try:
            rates[policy] = hit_rate(replicas, process.url, workload(seed))
        finally:
            stop([process], timeout=5)
    print(f"\nsummed prefix-cache hit rate over 2 replicas, {NUM_SYSTEM_PROMPTS} system prompts x "
          f"{NUM_USERS} users: round_robin {rates['round_robin']:.1%}, cache_aware "
          f"{rates['cache_aware']:.1%}")
    assert rates["cache_aware"] > rates["round_robin"] + 0.15, rates


def test_the_router_reads_each_replicas_load_and_settings(replicas, tmp_path):
    """What power_of_two and kv_aware ask a worker: the router's /get_loads reads each
    replica's /get_load (-1 when a worker does not answer it)."""
    process = router(replicas, "power_of_two", tmp_path)
    try:
        loads = httpx.get(f"{process.url}/get_loads", timeout=10).json()["workers"]
    finally:
        stop([process], timeout=5)
    assert sorted(w["worker"] for w in loads) == sorted(r.url for r in replicas), loads
    assert all(w["load"] == 0 for w in loads), loads  # idle replicas, answered
    for r in replicas:
        info = httpx.get(f"{r.url}/get_server_info", timeout=5).json()
        assert (info["block_size"], info["num_gpu_blocks"], info["max_model_len"]) == (16, 80, 512)
        assert httpx.get(f"{r.url}/load", timeout=5).json() == {"server_load": 0}
        model_info = httpx.get(f"{r.url}/get_model_info", timeout=5).json()
        assert model_info["is_generation"] is True
        assert "/" not in model_info["model_path"] + info["model_path"], "a path revealed"


def test_a_replica_killed_mid_run_costs_no_request(replicas, tmp_path):
    process = router(replicas, "cache_aware", tmp_path)
    victim, survivor = replicas
    done = []

    def kill_after_a_few():
        done.append(1)
        if len(done) == 8:
            os.kill(victim.pid, signal.SIGKILL)

    try:
        prompts = workload(seed=7)[:32]
        started = time.monotonic()
        results = send_all(process.url, prompts, on_done=kill_after_a_few)
        elapsed = time.monotonic() - started
    finally:
        stop([process], timeout=5)
    assert not victim.alive, "the replica was not killed: the test proved nothing"
    failed = [error for ok, _, error in results if not ok]
    slowest = max(seconds for _, seconds, _ in results)
    print(f"\n{len(prompts)} requests, one replica killed after 8: {len(failed)} failed, "
          f"slowest {slowest:.2f} s, all in {elapsed:.1f} s")
    assert not failed, failed[:3]
    assert slowest < REQUEST_DEADLINE
    assert survivor.alive


def test_launch_stops_every_process_on_sigterm(launched):
    launch, replicas = launched
    children = child_pids(launch.pid)
    assert len(children) >= 2, children  # its router and the replica still alive
    launch.send_signal(signal.SIGTERM)
    assert launch.wait(60) == 0
    left = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not left, f"minillm launch left processes behind: {left}"
