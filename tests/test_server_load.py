"""The server under load, at its limits, and shutting down (each test has its own server).

- 200 requests at concurrency 64 over loopback, a fifth of the clients vanishing mid-stream:
  no server error, no leaked KV block, /health still 200.
- A full waiting queue answers 429 instead of queueing without bound.
- SIGTERM lets an in-flight stream finish while new requests get 503.
"""
from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import openai
import pytest

from server_process import ServerProcess

NUM_REQUESTS, CONCURRENCY, DISCONNECT_EVERY = 200, 64, 5


async def one_client(client: openai.AsyncOpenAI, i: int) -> str:
    """Client i: every 5th reads two chunks of a long stream and hangs up; the others complete
    or chat, streamed or not. The long streams ask for 480 tokens: enough that none can finish
    before its client is gone, even while 64 clients share the machine with the server."""
    if i % DISCONNECT_EVERY == 0:
        stream = await client.completions.create(
            model="tiny", prompt=f"request {i}", max_tokens=480, stream=True,
            extra_body={"ignore_eos": True})
        chunks = 0
        async for _ in stream:
            chunks += 1
            if chunks == 2:
                break
        await stream.close()
        return "disconnected"
    kwargs = dict(model="tiny", max_tokens=8 + i % 8, temperature=0.8, seed=i,
                  stream=i % 2 == 0)
    if i % 3 == 0:
        result = await client.chat.completions.create(
            messages=[{"role": "user", "content": f"hello {i}"}], **kwargs)
    else:
        result = await client.completions.create(prompt=f"The fox number {i}", **kwargs)
    if kwargs["stream"]:
        async for _ in result:
            pass
    return "done"


async def run_load(url: str) -> list[str]:
    gate = asyncio.Semaphore(CONCURRENCY)
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0,
                                  timeout=60) as client:
        async def gated(i):
            async with gate:
                return await one_client(client, i)
        return await asyncio.gather(*(gated(i) for i in range(NUM_REQUESTS)))


def test_load_with_disconnects(llama_checkpoint):
    server = ServerProcess(llama_checkpoint, "--served-model-name", "tiny",
                           "--max-num-seqs", "64", "--max-model-len", "512")
    try:
        started = time.monotonic()
        results = asyncio.run(run_load(server.url))
        elapsed = time.monotonic() - started
        m = server.wait_idle()
        assert results.count("done") == NUM_REQUESTS - NUM_REQUESTS // DISCONNECT_EVERY
        assert m["vllm:kv_cache_usage_perc"] == 0, "leaked KV blocks"
        assert m["vllm:num_requests_running"] == m["vllm:num_requests_waiting"] == 0
        assert m["vllm:request_success_total{finished_reason=abort}"] == (
            NUM_REQUESTS // DISCONNECT_EVERY)
        assert httpx.get(f"{server.url}/health").status_code == 200
        log = server.log()
        assert "Traceback" not in log and "ERROR" not in log
        assert not re.search(r"-> 5\d\d", log), "a request got a server error"
        assert elapsed < 60
    finally:
        server.stop()


def test_full_queue_is_429(llama_checkpoint):
    server = ServerProcess(llama_checkpoint, "--served-model-name", "tiny",
                           "--max-num-seqs", "1", "--max-waiting-requests", "1")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
    long = dict(model="tiny", prompt="a", max_tokens=400, stream=True,
                extra_body={"ignore_eos": True})
    try:
        running = client.completions.create(**long)
        next(iter(running))  # it has produced a token: it runs
        waiting = client.completions.create(**long)  # max_num_seqs=1: this one waits
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model="tiny", prompt="a", max_tokens=2)
        assert "--max-waiting-requests 1" in e.value.response.json()["error"]["message"]
        running.close()
        waiting.close()
        assert server.wait_idle()["vllm:kv_cache_usage_perc"] == 0
    finally:
        server.stop()


def test_sigterm_drains_in_flight_and_refuses_new(llama_checkpoint):
    server = ServerProcess(llama_checkpoint, "--served-model-name", "tiny",
                           "--shutdown-timeout", "60")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
    stream = client.completions.create(model="tiny", prompt="a", max_tokens=450, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks)
    rest: list = []
    reader = threading.Thread(target=lambda: rest.extend(chunks))
    try:
        server.terminate()
        reader.start()
        deadline = time.monotonic() + 10  # the signal reaches the server asynchronously
        while httpx.get(f"{server.url}/health").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(openai.InternalServerError) as e:
            client.completions.create(model="tiny", prompt="a", max_tokens=2)
        assert e.value.status_code == 503
        reader.join(60)
        assert rest[-2].choices[0].finish_reason == "length"
        assert rest[-1].usage.completion_tokens == 450  # drained to the end, not cut
        assert server.process.wait(30) in (0, -15)  # uvicorn re-raises SIGTERM once drained
        assert "draining 1 in-flight requests" in server.log()
    finally:
        server.stop()
