"""The OpenAI-compatible server, driven through the official `openai` client.

One server (a subprocess on 127.0.0.1, the small random llama checkpoint) serves every test of
this module; after each test, /metrics must show an empty KV cache and no request left.
"""
from __future__ import annotations

import argparse
import time

import httpx
import openai
import pytest

from server_process import API_KEY, ServerProcess

PROMPT = "The quick brown fox jumps over"


@pytest.fixture(scope="module")
def server(llama_checkpoint):
    process = ServerProcess(llama_checkpoint, "--api-key", API_KEY, "--served-model-name",
                            "tiny", "--max-model-len", "256")
    yield process
    process.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(autouse=True)
def kv_cache_empty_after(server):
    yield
    m = server.wait_idle()
    assert m["vllm:kv_cache_usage_perc"] == 0
    assert m["vllm:num_requests_running"] == m["vllm:num_requests_waiting"] == 0


def aborted(server) -> float:
    return server.metrics().get("vllm:request_success_total{finished_reason=abort}", 0)


def error_of(excinfo) -> dict:
    """The error body, checked to have OpenAI's shape."""
    body = excinfo.value.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == excinfo.value.status_code
    return body["error"]


# -- endpoints ----------------------------------------------------------------------------------
def test_models_health_version(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/version").json()["version"]


def test_completion_usage_and_request_id(client):
    raw = client.completions.with_raw_response.create(
        model="tiny", prompt=PROMPT, max_tokens=5, temperature=0,
        extra_headers={"X-Request-Id": "my-id-1"})
    assert raw.headers["x-request-id"] == "my-id-1"
    completion = raw.parse()
    assert completion.id == "cmpl-my-id-1"
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5


def test_streamed_text_equals_full_text(client):
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0.9, seed=7, n=2)
    full = client.completions.create(**kwargs)
    streamed = {0: "", 1: ""}
    finish = {}
    for chunk in client.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
            finish[choice.index] = choice.finish_reason
    assert streamed == {c.index: c.text for c in full.choices}
    assert finish == {0: "length", 1: "length"}
    assert full.choices[0].text != full.choices[1].text  # n samples, each its own seed


def test_chat_streamed_and_not(client):
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "hello"}],
                  max_completion_tokens=8, temperature=0.7, seed=3)
    full = client.chat.completions.create(**kwargs)
    assert full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens == 8
    chunks = list(client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_stop_string_and_n(client):
    greedy = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16,
                                       temperature=0).choices[0].text
    stop = greedy[4:6]
    stopped = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16,
                                        temperature=0, stop=[stop], n=3)
    for choice in stopped.choices:  # greedy: all n samples agree
        assert choice.text == greedy[:greedy.index(stop)]
        assert choice.finish_reason == "stop"
        assert choice.model_extra["stop_reason"] == stop
    assert sorted(c.index for c in stopped.choices) == [0, 1, 2]


def test_completion_logprobs_and_echo(client):
    completion = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4,
                                           temperature=0, logprobs=2)
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and len(top) >= 2
        assert max(top.values()) == pytest.approx(logprob)  # greedy: the chosen is the best
    echoed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, temperature=0,
                                       echo=True)
    assert echoed.choices[0].text == PROMPT + completion.choices[0].text


def test_chat_logprobs(client):
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
        temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert len(content) == 3
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
               for t in content)


def test_batch_prompts_and_token_ids(client, server):
    completion = client.completions.create(model="tiny", prompt=[PROMPT, "A serving system"],
                                           max_tokens=3, temperature=0, n=2)
    texts = {c.index: c.text for c in completion.choices}
    assert sorted(texts) == [0, 1, 2, 3]  # prompt i's samples are choices 2i and 2i+1
    assert completion.usage.completion_tokens == 12
    ids = httpx.post(f"{server.url}/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=3, temperature=0)
    assert by_ids.choices[0].text == texts[0]


def test_tokenize_detokenize(server):
    body = httpx.post(f"{server.url}/tokenize", json={"prompt": PROMPT}).json()
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 256
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": body["tokens"]}).json()
    assert text["prompt"] == PROMPT
    chat = httpx.post(f"{server.url}/tokenize",
                      json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] > 0


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [dict(temperature=-1), dict(n=0), dict(top_p=2),
                                    dict(max_tokens=0), dict(logprobs=50)])
def test_invalid_fields_are_400(client, fields):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=PROMPT, **fields)
    assert error_of(e)["type"] == "BadRequestError"


def test_missing_field_is_400_not_422(server):
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "tiny"},
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"


def test_context_length_is_400_with_numbers(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="fox " * 300, max_tokens=4)
    message = error_of(e)["message"]
    assert "maximum context length is 256 tokens" in message and "you requested" in message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=300)
    assert "300 in the completion" in error_of(e)["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=2)
    assert "gpt-4" in error_of(e)["message"]


def test_api_key_is_required(server):
    for key in ("wrong", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.post(f"{server.url}/v1/completions", headers=headers,
                       json={"model": "tiny", "prompt": PROMPT})
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"
    assert httpx.get(f"{server.url}/health").status_code == 200  # outside /v1: open


# -- disconnects --------------------------------------------------------------------------------
def test_stream_disconnect_aborts(server, client):
    before = aborted(server)
    stream = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=200, stream=True,
                                       extra_body={"ignore_eos": True})
    next(iter(stream))
    stream.close()
    server.wait_idle()
    assert aborted(server) == before + 1


def test_non_stream_disconnect_aborts(server):
    """The hang-up frees the request's blocks, and is logged quietly: no ERROR, no 5xx. The
    client gives up after half the time the same request takes when it waits for the answer (a
    fixed 0.2 s was not enough on a fast machine)."""
    before = aborted(server)
    request = dict(headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": "tiny", "prompt": PROMPT, "max_tokens": 240,
                         "ignore_eos": True})
    start = time.monotonic()
    httpx.post(f"{server.url}/v1/completions", timeout=60, **request).raise_for_status()
    answered_in = time.monotonic() - start
    request["headers"]["X-Request-Id"] = "gone-1"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", timeout=answered_in / 2, **request)
    m = server.wait_idle()
    assert m["vllm:request_success_total{finished_reason=abort}"] == before + 1
    log = server.log()
    assert "request cmpl-gone-1 aborted before it finished" in log
    assert "request gone-1: POST /v1/completions -> disconnected" in log
    assert "ERROR" not in log and "Traceback" not in log


# -- the serving benchmark ----------------------------------------------------------------------
def test_bench_serve_against_the_server(server, llama_checkpoint, tmp_path, monkeypatch):
    from minillm.bench import serve

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args([
        "--base-url", server.url, "--model", str(llama_checkpoint), "--num-prompts", "8",
        "--random-input-len", "8", "--random-output-len", "6", "--max-concurrency", "4",
        "--goodput", "ttft:100000", "--save-result", "--result-dir", str(tmp_path),
        "--plot", str(tmp_path / "serve.png")])
    result = serve.main(args)
    assert result["completed"] == 8 and result["failed"] == 0
    assert result["total_output_tokens"] == 8 * 6
    assert result["request_goodput"] == pytest.approx(result["request_throughput"])
    assert result["median_ttft_ms"] > 0 and result["p99_tpot_ms"] > 0
    assert (tmp_path / "serve.png").stat().st_size > 0
    assert len(list(tmp_path.glob("serve-*.json"))) == 1
