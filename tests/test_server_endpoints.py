"""The endpoints clients call besides completions and chat: /ping, /v1/models/{id},
/v1/embeddings (a clear error), /v1/responses (text in, text out, through the official openai
client, whole and streamed), and the shape of stream chunks (unset fields left out)."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from server_process import API_KEY, ServerProcess

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


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
def engine_idle_after(server):
    """Whatever a test sent, served or refused, leaves no request and no KV block behind."""
    yield
    m = server.wait_idle()
    assert m["vllm:kv_cache_usage_perc"] == 0
    assert m["vllm:num_requests_running"] == m["vllm:num_requests_waiting"] == 0


def openai_error(excinfo) -> dict:
    body = excinfo.value.response.json()
    assert set(body) == {"error"} and body["error"]["code"] == excinfo.value.status_code
    return body["error"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_ping(server, method):
    r = httpx.request(method, f"{server.url}/ping")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_models_retrieve(client):
    card = client.models.retrieve("tiny")
    assert card.id == "tiny" and card.object == "model" and card.max_model_len == 256
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.models.retrieve("gpt-9")
    error = openai_error(excinfo)
    assert "gpt-9" in error["message"] and error["param"] == "model"


def test_embeddings_is_a_clear_error(client):
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.embeddings.create(model="tiny", input="hello")
    assert "does not support the Embeddings API" in openai_error(excinfo)["message"]


def chat_text(client, instructions, text, max_tokens):
    chat = client.chat.completions.create(
        model="tiny", max_completion_tokens=max_tokens, temperature=0,
        messages=[{"role": "system", "content": instructions}, {"role": "user", "content": text}])
    return chat.choices[0].message.content, chat.usage


def test_responses_create_equals_the_chat_completion(client):
    """Same prompt (instructions as the system message), same greedy text and usage."""
    response = client.responses.create(model="tiny", instructions="Be brief.",
                                       input="Tell me about Bath.", max_output_tokens=9,
                                       temperature=0)
    text, used = chat_text(client, "Be brief.", "Tell me about Bath.", 9)
    assert response.output_text == text and text
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.input_tokens == used.prompt_tokens
    assert response.usage.output_tokens == used.completion_tokens == 9
    assert response.id.startswith("resp_") and response.output[0].role == "assistant"


def test_responses_message_list_input(client):
    response = client.responses.create(
        model="tiny", max_output_tokens=6, temperature=0,
        input=[{"role": "system", "content": "Be brief."},
               {"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}])
    assert response.output_text == chat_text(client, "Be brief.", "Hi there", 6)[0]


def test_responses_stream_events(client):
    whole = client.responses.create(model="tiny", input="Once upon a time", temperature=0,
                                    max_output_tokens=12)
    events = list(client.responses.create(model="tiny", input="Once upon a time",
                                          temperature=0, max_output_tokens=12, stream=True))
    types = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    assert set(types[4:-4]) == {"response.output_text.delta"} and deltas
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(deltas) == whole.output_text == events[-1].response.output_text


def test_responses_refuses_what_it_does_not_do(client):
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.responses.create(model="tiny", input="hi", tools=[{"type": "web_search"}])
    error = openai_error(excinfo)
    assert error["param"] == "tools" and "`tools` is not supported" in error["message"]


def sse_chunks(server, path, body) -> list[dict]:
    with httpx.stream("POST", f"{server.url}{path}", json=body, headers=HEADERS) as r:
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_stream_chunks_leave_unset_fields_out(server):
    """As vLLM: `role` on a choice's first delta only, no `usage: null` on chunks."""
    chat = sse_chunks(server, "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "max_tokens": 5, "n": 2})
    first = {}
    for chunk in chat:
        assert "usage" not in chunk, chunk
        for choice in chunk["choices"]:
            assert ("role" in choice["delta"]) == (choice["index"] not in first), chunk
            first[choice["index"]] = True
    assert first == {0: True, 1: True}
    completion = sse_chunks(server, "/v1/completions", {"model": "tiny", "prompt": "hi",
                                                        "stream": True, "max_tokens": 5})
    assert completion and all("usage" not in chunk for chunk in completion)


def test_continuous_usage_stats(server):
    """vLLM's `continuous_usage_stats`: every chunk carries the usage so far; the last one
    (with `include_usage`) the total."""
    chunks = sse_chunks(server, "/v1/completions", {
        "model": "tiny", "prompt": "hi", "stream": True, "max_tokens": 6, "ignore_eos": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    counts = [chunk["usage"]["completion_tokens"] for chunk in chunks]
    assert counts == sorted(counts) and counts[-1] == 6 and len(set(counts)) > 2, counts
    chat = sse_chunks(server, "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "max_tokens": 6, "ignore_eos": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    counts = [chunk["usage"]["completion_tokens"] for chunk in chat[1:]]  # after the role chunk
    assert counts == sorted(counts) and counts[-1] == 6 and len(set(counts)) > 2, counts
