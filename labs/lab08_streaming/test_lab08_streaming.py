"""Lab 8 tests. `make grade LAB=lab08` grades all tasks, `make grade LAB=lab08 TASK=8.2` one.

Every test serves the bundled model over real HTTP with your `stream_completion` mounted as the
streamed `/v1/completions` handler (`build_app(..., completion_stream=...)`; uvicorn in a thread
of this process) and reads it as a client would: the raw event stream with httpx, and OpenAI's
official `openai` client. The expected texts and usage come from the same server's non-streamed
answer to the same seeded request (minillm's own code path), so the prompts, `n` and
`max_tokens` can be drawn fresh each run (the header prints the seed).
`make grade LAB=lab08 INTEGRATION=1` adds concurrent streams from several client threads.
"""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest

STARTER = "streaming.py"
REFERENCE = "minillm.entrypoints.openai.serving_completion"

NUM_BLOCKS, MAX_MODEL_LEN = 96, 256
WORDS = ("the house was quiet when Elizabeth came down to the garden and her sister had "
         "already gone out with a letter from London about the ball").split()


@pytest.fixture(scope="module")
def engine():
    from minillm.config import EngineConfig
    from minillm.engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(num_gpu_blocks_override=NUM_BLOCKS,
                                  max_model_len=MAX_MODEL_LEN))


@contextlib.contextmanager
def serve(engine, handler):
    """minillm's server with `handler` for streamed completions, on a free loopback port."""
    import uvicorn

    from minillm.entrypoints.openai.api_server import build_app

    app = build_app(engine, ["tiny"], log_requests=False, completion_stream=handler)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def url(engine, impl):
    with serve(engine, impl.stream_completion) as base:
        yield base


def prompt(rng) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))


def request_body(rng, **fields) -> dict:
    body = {"model": "tiny", "prompt": prompt(rng), "max_tokens": rng.randint(4, 40),
            "temperature": 0.8, "seed": rng.randrange(10**6), "ignore_eos": True}
    return body | fields


def events(url: str, body: dict) -> list[str]:
    """The `data:` payloads of a streamed answer, in order; checks the SSE framing."""
    with httpx.stream("POST", f"{url}/v1/completions", json=body | {"stream": True},
                      timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream"), \
            f"streamed answer to {body}: content-type {response.headers['content-type']!r}, " \
            "expected text/event-stream"
        raw = response.read().decode()
    assert raw.endswith("\n\n"), f"the stream does not end with a blank line: {raw[-80:]!r}"
    payloads = []
    for event in raw.split("\n\n")[:-1]:
        assert event.startswith("data: "), f"an event that is not `data: ...`: {event[:80]!r}"
        payloads.append(event[len("data: "):])
    return payloads


def chunks_of(payloads: list[str], body: dict) -> list[dict]:
    """The JSON chunks, after checking that `[DONE]` ends the stream, once."""
    assert payloads and payloads[-1] == "[DONE]", \
        f"the stream must end with `data: [DONE]`; its last events: {payloads[-2:]} ({body})"
    assert payloads.count("[DONE]") == 1, f"[DONE] sent {payloads.count('[DONE]')} times"
    return [json.loads(p) for p in payloads[:-1]]


def whole(url: str, body: dict) -> dict:
    """minillm's non-streamed answer to the same request: the expected texts and usage."""
    body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def texts_by_index(chunks: list[dict], body: dict) -> tuple[dict, dict]:
    """Each choice's text (its deltas joined) and finish reason, from the chunks."""
    texts, reasons = {}, {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            i = choice["index"]
            assert i not in reasons, f"choice {i} got a chunk after its finish_reason ({body})"
            texts[i] = texts.get(i, "") + choice["text"]
            if choice["finish_reason"] is not None:
                reasons[i] = choice["finish_reason"]
    return texts, reasons


def check_against_whole(chunks: list[dict], expected: dict, body: dict) -> None:
    texts, reasons = texts_by_index(chunks, body)
    want = {c["index"]: c for c in expected["choices"]}
    assert sorted(texts) == sorted(want), \
        f"choices {sorted(texts)} streamed, expected indexes {sorted(want)} ({body})"
    for i, c in want.items():
        assert texts[i] == c["text"], (f"choice {i}: the streamed deltas join to "
                                       f"{texts[i]!r}, the completion is {c['text']!r} ({body})")
        assert reasons.get(i) == c["finish_reason"], \
            f"choice {i}: finish_reason {reasons.get(i)!r}, expected {c['finish_reason']!r}"


def wait_idle(url: str, timeout: float = 20) -> dict[str, float]:
    """The server's /metrics once nothing runs and no KV block is held (or at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        figures = {}
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith("vllm:"):
                name, value = line.rsplit(" ", 1)
                figures[name.split("{")[0]] = float(value)
        if (figures["vllm:kv_cache_usage_perc"] == 0 and figures["vllm:num_requests_running"]
                == 0) or time.monotonic() > deadline:
            return figures
        time.sleep(0.05)


# -- 8.1 chunks and [DONE] ----------------------------------------------------------------------
@pytest.mark.task8_1
@pytest.mark.timeout(180)
def test_chunks_are_deltas_in_openai_shape(url, rng):
    body = request_body(rng)
    chunks = chunks_of(events(url, body), body)
    assert len(chunks) >= 2, f"{len(chunks)} chunk(s) for {body['max_tokens']} tokens: the " \
                             f"text must go out as it is generated, not at the end"
    for chunk in chunks:
        assert chunk["object"] == "text_completion" and chunk["model"] == "tiny", chunk
        assert chunk["id"] == chunks[0]["id"] and chunk["id"].startswith("cmpl-"), chunk
        assert chunk["created"] == chunks[0]["created"], "one `created` for the whole stream"
        assert len(chunk["choices"]) == 1, f"one choice per chunk: {chunk}"
        assert chunk.get("usage") is None, f"usage without stream_options: {chunk}"
    check_against_whole(chunks, whole(url, body), body)


@pytest.mark.task8_1
@pytest.mark.timeout(180)
def test_the_openai_client_reads_the_stream(url, rng):
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    body = request_body(rng)
    streamed = client.completions.create(stream=True, **body_args(body))
    text = "".join(chunk.choices[0].text for chunk in streamed)
    want = client.completions.create(**body_args(body)).choices[0].text
    assert text == want, f"the openai client read {text!r}, the completion is {want!r} ({body})"


def body_args(body: dict) -> dict:
    """A body as the openai client's arguments (minillm's own fields go in extra_body)."""
    return {"model": body["model"], "prompt": body["prompt"], "max_tokens": body["max_tokens"],
            "temperature": body["temperature"], "seed": body["seed"], "n": body.get("n", 1),
            "extra_body": {"ignore_eos": True}}


# -- 8.2 n samples, several prompts, usage ------------------------------------------------------
@pytest.mark.task8_2
@pytest.mark.timeout(180)
def test_n_samples_of_several_prompts(url, rng):
    prompts = [prompt(rng) for _ in range(rng.randint(2, 3))]
    body = request_body(rng, prompt=prompts, n=rng.randint(2, 3), max_tokens=rng.randint(4, 24))
    chunks = chunks_of(events(url, body), body)
    check_against_whole(chunks, whole(url, body), body)


@pytest.mark.task8_2
@pytest.mark.timeout(180)
def test_usage_only_when_asked(url, rng):
    prompts = [prompt(rng) for _ in range(rng.randint(2, 3))]  # usage sums over all of them
    body = request_body(rng, prompt=prompts, n=rng.randint(1, 3),
                        stream_options={"include_usage": True})
    chunks = chunks_of(events(url, body), body)
    want = whole(url, body)["usage"]
    last = chunks[-1]
    assert last["choices"] == [] and last.get("usage"), \
        f"with include_usage the chunk before [DONE] has choices [] and the usage: {last}"
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert last["usage"][key] == want[key], \
            f"usage {key} = {last['usage'][key]}, expected {want[key]} ({len(prompts)} " \
            f"prompts, n={body['n']}, max_tokens={body['max_tokens']})"
    assert all(c.get("usage") is None for c in chunks[:-1]), "usage before the last chunk"
    check_against_whole(chunks[:-1], whole(url, body), body)
    del body["stream_options"]
    assert all(c.get("usage") is None for c in chunks_of(events(url, body), body)), \
        "a usage chunk without stream_options.include_usage"


# -- 8.3 disconnects ----------------------------------------------------------------------------
@pytest.mark.task8_3
@pytest.mark.timeout(180)
def test_a_client_that_hangs_up_frees_its_blocks(url, rng):
    n = rng.randint(1, 3)
    body = request_body(rng, n=n, max_tokens=MAX_MODEL_LEN - 40, stream=True)
    before = wait_idle(url)["vllm:generation_tokens_total"]
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        read = [line for _, line in zip(range(2 + rng.randint(0, 4)), lines)]
        assert any(line.startswith("data: {") for line in read), read
    after = wait_idle(url)
    assert after["vllm:kv_cache_usage_perc"] == 0, \
        "the client hung up, but the engine still holds KV blocks for it: abort what did " \
        "not finish on the way out of your generator"
    generated = after["vllm:generation_tokens_total"] - before
    assert generated < body["max_tokens"] * n // 2, \
        f"the engine generated {generated:.0f} tokens for a client that hung up after a few " \
        f"chunks (n={n}, max_tokens={body['max_tokens']}): it was not aborted"


# -- integration: concurrent clients ------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_concurrent_streams_with_the_openai_client(url, rng):
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    bodies = [request_body(rng, n=rng.randint(1, 2)) for _ in range(6)]
    results: dict[int, tuple] = {}

    def stream(k: int) -> None:
        texts, usage = {}, None
        for chunk in client.completions.create(stream=True, stream_options={
                "include_usage": True}, **body_args(bodies[k])):
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + choice.text
            usage = chunk.usage or usage
        results[k] = texts, usage

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k, body in enumerate(bodies):
        want = client.completions.create(**body_args(body))
        texts, usage = results[k]
        assert texts == {c.index: c.text for c in want.choices}, f"request {k} ({body})"
        assert usage is not None and usage.completion_tokens == want.usage.completion_tokens, \
            f"request {k} ({body}): the streamed usage is {usage}, expected completion_tokens " \
            f"{want.usage.completion_tokens}"
    assert wait_idle(url)["vllm:kv_cache_usage_perc"] == 0, \
        f"all {len(bodies)} concurrent streams ended, but the engine still holds KV blocks"
