"""`/v1/completions` with `echo` and `logprobs`: the prompt's own logprobs, as lm-eval's
`local-completions` asks for them to score multiple-choice answers, against transformers'
(float32, 1e-4); and `max_tokens: 0` with `echo` (the prompt alone), as vLLM answers both.
"""
from __future__ import annotations

import json
import random

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from server_process import ServerProcess


@pytest.fixture(scope="module")
def server(llama_checkpoint):
    process = ServerProcess(llama_checkpoint, "--dtype", "float32", "--max-model-len", "256")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def reference(llama_checkpoint):
    return AutoModelForCausalLM.from_pretrained(llama_checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(llama_checkpoint):
    return AutoTokenizer.from_pretrained(llama_checkpoint)


@torch.inference_mode()
def reference_logprobs(model, ids: list[int]) -> torch.Tensor:
    """Row p: transformers' log-probabilities of the token after position p."""
    return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def random_prompts(count: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(2, 30))] for _ in range(count)]


def complete(server, **body) -> dict:
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def assert_prompt_logprobs(model, tokenizer, prompt: list[int], logprobs: dict, k: int) -> None:
    """The first len(prompt) entries of a choice's logprobs are the prompt's: null first, then
    transformers' values; at most k + 1 top entries (the chosen token and the top k)."""
    expected = reference_logprobs(model, prompt)
    where = f"prompt {prompt}"
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None, where
    assert logprobs["tokens"][0] == tokenizer.decode([prompt[0]]), where
    for pos in range(1, len(prompt)):
        row = expected[pos - 1]
        got = logprobs["token_logprobs"][pos]
        assert abs(got - float(row[prompt[pos]])) < 1e-4, (where, pos, got)
        assert logprobs["tokens"][pos] == tokenizer.decode([prompt[pos]]), (where, pos)
        top = logprobs["top_logprobs"][pos]
        assert 1 <= len(top) <= k + 1, (where, pos, top)
        best = tokenizer.decode([int(row.argmax())])
        if k >= 1:
            assert abs(top[best] - float(row.max())) < 1e-4, (where, pos, top)
    offsets = logprobs["text_offset"]
    lengths = [len(t) for t in logprobs["tokens"]]
    assert offsets == [sum(lengths[:i]) for i in range(len(lengths))], where


def test_echo_logprobs_as_lm_eval_sends_them(server, reference, tokenizer):
    """lm-eval's exact request: a batch of token-id prompts, max_tokens 1, logprobs 1, echo."""
    prompts = random_prompts(3, reference.config.vocab_size, seed=random.randrange(10**6))
    body = complete(server, prompt=prompts, max_tokens=1, logprobs=1, echo=True, temperature=0)
    assert len(body["choices"]) == len(prompts)
    for prompt, choice in zip(prompts, body["choices"]):
        logprobs = choice["logprobs"]
        assert len(logprobs["tokens"]) == len(prompt) + 1, prompt
        assert_prompt_logprobs(reference, tokenizer, prompt, logprobs, k=1)
        # the generated token follows the prompt's: greedy, with its own logprob
        row = reference_logprobs(reference, prompt)[-1]
        assert logprobs["tokens"][-1] == tokenizer.decode([int(row.argmax())]), prompt
        assert abs(logprobs["token_logprobs"][-1] - float(row.max())) < 1e-4, prompt
        assert choice["text"].startswith(tokenizer.decode(prompt)), prompt


def test_echo_text_prompt_with_more_top_logprobs(server, reference, tokenizer):
    text = "The quick brown fox jumps over the lazy dog"
    body = complete(server, prompt=text, max_tokens=3, logprobs=5, echo=True, temperature=0)
    ids = tokenizer.encode(text)
    choice = body["choices"][0]
    assert choice["text"].startswith(text)
    assert len(choice["logprobs"]["tokens"]) == len(ids) + 3
    assert_prompt_logprobs(reference, tokenizer, ids, choice["logprobs"], k=5)
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_max_tokens_0_with_echo_returns_the_prompt_alone(server, reference, tokenizer):
    prompts = random_prompts(2, reference.config.vocab_size, seed=random.randrange(10**6))
    body = complete(server, prompt=prompts, max_tokens=0, logprobs=0, echo=True)
    for prompt, choice in zip(prompts, body["choices"]):
        assert choice["text"] == tokenizer.decode(prompt), prompt
        assert len(choice["logprobs"]["tokens"]) == len(prompt), prompt
        assert_prompt_logprobs(reference, tokenizer, prompt, choice["logprobs"], k=0)
        assert choice["finish_reason"] == "length"
    # without logprobs: the text alone
    body = complete(server, prompt="Hello there", max_tokens=0, echo=True)
    assert body["choices"][0]["text"] == "Hello there"
    assert body["choices"][0]["logprobs"] is None


def test_max_tokens_0_without_echo_is_a_400(server):
    response = httpx.post(f"{server.url}/v1/completions",
                          json={"prompt": "Hello", "max_tokens": 0}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "max_tokens"


def test_streamed_echo_logprobs_equal_the_whole_response(server, reference):
    prompt = random_prompts(1, reference.config.vocab_size, seed=random.randrange(10**6))[0]
    body = dict(prompt=prompt, max_tokens=4, logprobs=2, echo=True, temperature=0,
                ignore_eos=True)
    whole = complete(server, **body)["choices"][0]
    text, tokens, token_logprobs = "", [], []
    with httpx.stream("POST", f"{server.url}/v1/completions", json={**body, "stream": True},
                      timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                text += choice["text"]
                tokens += choice["logprobs"]["tokens"]
                token_logprobs += choice["logprobs"]["token_logprobs"]
    assert text == whole["text"]
    assert tokens == whole["logprobs"]["tokens"]
    assert token_logprobs == pytest.approx(whole["logprobs"]["token_logprobs"], abs=1e-5)


def assert_vllm_prompt_logprobs(model, prompt: list[int], entries: list, k: int) -> None:
    """vLLM's `prompt_logprobs` shape: null first, then {token id: {logprob, rank,
    decoded_token}} holding the prompt token and the top k, equal to transformers'."""
    expected = reference_logprobs(model, prompt)
    assert len(entries) == len(prompt) and entries[0] is None, f"prompt {prompt}: {entries[:2]}"
    for pos in range(1, len(prompt)):
        row, entry, where = expected[pos - 1], entries[pos], f"prompt {prompt}, position {pos}"
        top = set(row.topk(k).indices.tolist()) if k else set()
        assert set(map(int, entry)) == top | {prompt[pos]}, (where, entry)
        for token, e in entry.items():
            assert abs(e["logprob"] - float(row[int(token)])) < 1e-4, (where, token, e)
            assert e["rank"] == 1 + int((row > row[int(token)]).sum()), (where, token, e)


@pytest.mark.parametrize("k", [0, 3])
def test_prompt_logprobs_field_as_vllm_answers_it(server, reference, k):
    """vLLM's `prompt_logprobs: k`: completions carry them in each choice, chat at the top."""
    prompts = random_prompts(2, reference.config.vocab_size, seed=random.randrange(10**6))
    body = complete(server, prompt=prompts, max_tokens=2, prompt_logprobs=k)
    for prompt, choice in zip(prompts, body["choices"]):
        assert_vllm_prompt_logprobs(reference, prompt, choice["prompt_logprobs"], k)
        assert choice["logprobs"] is None  # not asked for
    # with echo and a different k for the echoed logprobs: each answer keeps its own k
    body = complete(server, prompt=prompts[0], max_tokens=1, prompt_logprobs=k, echo=True,
                    logprobs=1)
    choice = body["choices"][0]
    assert_vllm_prompt_logprobs(reference, prompts[0], choice["prompt_logprobs"], k)
    assert all(len(top) <= 2 for top in choice["logprobs"]["top_logprobs"][1:]), choice
    # chat: one prompt, the top-level field (as vLLM)
    response = httpx.post(f"{server.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 2,
        "prompt_logprobs": k}, timeout=60)
    assert response.status_code == 200, response.text
    ids = httpx.post(f"{server.url}/tokenize", json={
        "messages": [{"role": "user", "content": "Hello there"}]}, timeout=60).json()["tokens"]
    assert_vllm_prompt_logprobs(reference, ids, response.json()["prompt_logprobs"], k)


def test_prompt_logprobs_are_left_out_unless_asked_and_refused_with_a_stream(server):
    body = complete(server, prompt="Hello", max_tokens=1)
    assert "prompt_logprobs" not in body["choices"][0]
    response = httpx.post(f"{server.url}/v1/completions", json={
        "prompt": "Hello", "max_tokens": 1, "prompt_logprobs": 1, "stream": True}, timeout=30)
    assert response.status_code == 400 and \
        response.json()["error"]["param"] == "prompt_logprobs", response.text
