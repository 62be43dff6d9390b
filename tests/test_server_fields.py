"""Nothing silently ignored: every field of every request model is either implemented, with a
test that shows it changing the result, or refused with a 400 that names it.

`test_every_field_is_implemented_or_refused` walks the models (and the models inside them):
a field marked `NotSupported` must be a 400 naming it (sent over HTTP for the endpoints' own
models); any other field must be in IMPLEMENTED with the test that proves it, and that test
must exist. A field added without either fails it. A request's own fields are listed by name
(`"logit_bias"`), the fields of the models inside it as `"ChatMessage.name"`.

The server here runs a copy of the test checkpoint whose tokenizer adds a BOS token and whose
chat template reads a `greeting` variable and the messages' `name`, so that
`add_special_tokens`, `chat_template_kwargs` and `name` have something to change.
"""
from __future__ import annotations

import re
import shutil
import typing
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel, ValidationError
from checkpoints import VOCAB_SIZE
from tokenizers import Tokenizer, processors

from minillm.entrypoints.openai import protocol
from minillm.entrypoints.openai.protocol import not_supported
from server_process import ServerProcess

TESTS = Path(__file__).parent
TEMPLATE = ("{% if greeting %}{{ greeting }}\n{% endif %}{% for m in messages %}{{ m['role'] }}"
            "{% if m['name'] %} ({{ m['name'] }}){% endif %}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
BOS = "<|endoftext|>"

# The endpoint of each request model, and a smallest valid body for it.
ENDPOINTS = {
    protocol.CompletionRequest: ("/v1/completions", {"prompt": "hi", "max_tokens": 2}),
    protocol.ChatCompletionRequest: ("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    protocol.ResponsesRequest: ("/v1/responses", {"input": "hi", "max_output_tokens": 2}),
    protocol.TokenizeRequest: ("/tokenize", {"prompt": "hi"}),
    protocol.DetokenizeRequest: ("/detokenize", {"tokens": [1]}),
}

# Fields whose effect `test_field_changes_the_result` shows: (endpoint, the field's body part).
# The result with it must differ from the same request without it (seeded, so reproducible).
C, CHAT = "/v1/completions", "/v1/chat/completions"
EFFECTS = {
    "n": (C, {"n": 2}),
    "temperature": (C, {"temperature": 0}),
    "top_p": (C, {"top_p": 1e-6}),
    "top_k": (C, {"top_k": 1}),
    "min_p": (C, {"min_p": 1.0}),
    "presence_penalty": (C, {"presence_penalty": 2, "temperature": 0}),
    "frequency_penalty": (C, {"frequency_penalty": 2, "temperature": 0}),
    "repetition_penalty": (C, {"repetition_penalty": 10, "temperature": 0}),
    "seed": (C, {"seed": 2}),
    "max_tokens": (C, {"max_tokens": 3}),
    "max_completion_tokens": (CHAT, {"max_completion_tokens": 3}),
    "logprobs": (C, {"logprobs": 1}),
    "top_logprobs": (CHAT, {"logprobs": True, "top_logprobs": 3}),
    "logit_bias": (C, {"logit_bias": {"123": 100}}),
    "ignore_eos": (C, {"logit_bias": {"0": 100}, "ignore_eos": True}),
    "min_tokens": (C, {"logit_bias": {"0": 100}, "min_tokens": 3}),
    "stop_token_ids": (C, {"logit_bias": {"77": 100}, "stop_token_ids": [77]}),
    "skip_special_tokens": (C, {"logit_bias": {"0": 100}, "ignore_eos": True,
                                "skip_special_tokens": False}),
    "add_generation_prompt": (CHAT, {"add_generation_prompt": False}),
    "stop": (C, {"stop": ["e", "a", "o", " "]}),
    "user": (C, {"user": "alice"}),  # the log line, checked in the test
}
BASES = {C: {"prompt": "The quick brown fox", "max_tokens": 8, "seed": 1},
         CHAT: {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "seed": 1}}

# Every implemented field, with the test that shows it working.
F = "test_server_fields.py::"
EFFECT = F + "test_field_changes_the_result"
S = "test_server_structured.py::"  # structured outputs and tools
SCHEMA = S + "test_response_format_json_schema_on_chat_and_completions"
JSON_OBJECT = S + "test_response_format_json_object_and_text"
GUIDED = S + "test_vllm_structured_outputs_and_guided_fields"
NAMED = S + "test_named_tool_choice_returns_a_call_whose_arguments_follow_the_schema"
REQUIRED = S + "test_required_tool_choice_returns_calls_to_the_given_tools"
CONVERSATION = S + "test_a_conversation_with_tool_calls_and_tool_results"
IMPLEMENTED = {
    **{field: EFFECT for field in EFFECTS},
    "model": "test_server.py::test_unknown_model_is_404",
    "prompt": "test_server.py::test_batch_prompts_and_token_ids",
    "messages": "test_server.py::test_chat_streamed_and_not",
    "stream": "test_server.py::test_streamed_text_equals_full_text",
    "stream_options": "test_server_endpoints.py::test_continuous_usage_stats",
    "priority": F + "test_priority_needs_the_priority_policy",
    "echo": "test_server_echo.py::test_echo_logprobs_as_lm_eval_sends_them",
    "prompt_logprobs": "test_server_echo.py::test_prompt_logprobs_field_as_vllm_answers_it",
    "best_of": F + "test_best_of_returns_the_likeliest_samples",
    "truncate_prompt_tokens": F + "test_truncate_prompt_tokens",
    "include_stop_str_in_output": F + "test_include_stop_str_in_output",
    "return_tokens_as_token_ids": F + "test_return_tokens_as_token_ids",
    "request_id": F + "test_request_id_names_the_response",
    "add_special_tokens": F + "test_add_special_tokens",
    "continue_final_message": F + "test_continue_final_message",
    "chat_template_kwargs": F + "test_chat_template_kwargs_and_names",
    "ChatMessage.name": F + "test_chat_template_kwargs_and_names",
    "ChatMessage.role": F + "test_chat_template_kwargs_and_names",
    "ChatMessage.content": F + "test_chat_template_kwargs_and_names",
    "ContentPart.type": F + "test_chat_template_kwargs_and_names",
    "ContentPart.text": F + "test_chat_template_kwargs_and_names",
    "StreamOptions.include_usage": "test_server.py::test_chat_streamed_and_not",
    "StreamOptions.continuous_usage_stats": "test_server_endpoints.py::test_continuous_usage_stats",
    "InputMessage.type": "test_server_endpoints.py::test_responses_message_list_input",
    "InputMessage.role": "test_server_endpoints.py::test_responses_message_list_input",
    "InputMessage.content": "test_server_endpoints.py::test_responses_message_list_input",
    "InputText.type": "test_server_endpoints.py::test_responses_message_list_input",
    "InputText.text": "test_server_endpoints.py::test_responses_message_list_input",
    "return_token_strs": F + "test_tokenize_fields",
    "tokens": "test_server.py::test_tokenize_detokenize",
    "input": "test_server_endpoints.py::test_responses_message_list_input",
    "instructions": "test_server_endpoints.py::test_responses_create_equals_the_chat_completion",
    "max_output_tokens": "test_server_endpoints.py::"
                         "test_responses_create_equals_the_chat_completion",
    # structured outputs and tools (a schema's or function's name, description and strict
    # are labels: the grammar always follows the schema exactly)
    "response_format": SCHEMA,
    "ResponseFormat.json_schema": SCHEMA,
    "JsonSchemaResponseFormat.schema_": SCHEMA,
    "JsonSchemaResponseFormat.name": SCHEMA,
    "JsonSchemaResponseFormat.description": SCHEMA,
    "JsonSchemaResponseFormat.strict": SCHEMA,
    "ResponseFormat.type": JSON_OBJECT,
    "structured_outputs": GUIDED,
    "StructuredOutputsRequest.json_": GUIDED,
    "StructuredOutputsRequest.regex": GUIDED,
    "StructuredOutputsRequest.choice": GUIDED,
    "StructuredOutputsRequest.grammar": GUIDED,
    "StructuredOutputsRequest.json_object": GUIDED,
    "guided_json": GUIDED,
    "guided_regex": GUIDED,
    "guided_choice": GUIDED,
    "guided_grammar": GUIDED,
    "tool_choice": NAMED,
    "ChatTool.type": NAMED,
    "ChatTool.function": NAMED,
    "FunctionDefinition.name": NAMED,
    "FunctionDefinition.parameters": NAMED,
    "FunctionDefinition.strict": NAMED,
    "NamedToolChoice.type": NAMED,
    "NamedToolChoice.function": NAMED,
    "NamedFunction.name": NAMED,
    "parallel_tool_calls": REQUIRED,
    "tools": CONVERSATION,
    "FunctionDefinition.description": CONVERSATION,
    "ChatMessage.tool_calls": CONVERSATION,
    "ChatMessage.tool_call_id": CONVERSATION,
    "ToolCall.id": CONVERSATION,
    "ToolCall.type": CONVERSATION,
    "ToolCall.function": CONVERSATION,
    "FunctionCall.name": CONVERSATION,
    "FunctionCall.arguments": CONVERSATION,
}


@pytest.fixture(scope="module")
def checkpoint(llama_checkpoint, tmp_path_factory) -> Path:
    """The test checkpoint, with a BOS-adding tokenizer and a template that reads more."""
    folder = tmp_path_factory.mktemp("fields") / "model"
    shutil.copytree(llama_checkpoint, folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.token_to_id(BOS))])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    return folder


@pytest.fixture(scope="module")
def server(checkpoint):
    process = ServerProcess(checkpoint, "--served-model-name", "tiny", "--max-model-len", "128")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return Tokenizer.from_file(str(checkpoint / "tokenizer.json"))


@pytest.fixture(autouse=True)
def engine_idle_after(server):
    """Whatever a test sent, served or refused, leaves no request and no KV block behind."""
    yield
    m = server.wait_idle()
    assert m["vllm:kv_cache_usage_perc"] == 0
    assert m["vllm:num_requests_running"] == m["vllm:num_requests_waiting"] == 0


def post(server, path: str, body: dict) -> dict:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert r.status_code == 200, (path, body, r.text[:300])
    return r.json()


def result(body: dict) -> dict:
    """A response without what differs on every call."""
    return {k: v for k, v in body.items() if k not in ("id", "created")}


# -- the walk -------------------------------------------------------------------------------------
def models_inside(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and the request models its fields hold (messages, stream options, ...)."""
    found = [model]
    for field in model.model_fields.values():
        for inner in _classes(field.annotation):
            if issubclass(inner, BaseModel) and inner not in found:
                found += [m for m in models_inside(inner) if m not in found]
    return found


def _classes(annotation) -> list[type]:
    if isinstance(annotation, type):
        return [annotation]
    return [c for arg in typing.get_args(annotation) for c in _classes(arg)]


def refusing_value(model: type[BaseModel], name: str, body: dict):
    """A value of the right type that the field's `NotSupported` refuses."""
    default = model.model_fields[name].get_default(call_default_factory=True)
    candidates = ([not default] if isinstance(default, bool) else []) + [
        True, False, 2.5, 7, "minillm-test", ["minillm-test"], {"minillm": "test"}]
    for value in candidates:
        try:
            model.model_validate({**body, name: value})
        except ValidationError as e:
            if e.errors()[0]["type"] == "not_supported":
                return value
    raise AssertionError(f"{model.__name__}.{name}: no value is refused as not supported")


def proof_exists(proof: str) -> bool:
    file, test = proof.split("::")
    path = TESTS / file
    return path.exists() and re.search(rf"^def {test}\(", path.read_text(), re.M) is not None


def test_every_field_is_implemented_or_refused(server):
    missing, refused = set(), []
    for top, (path, body) in ENDPOINTS.items():
        missing |= unproved(top)
        for model in models_inside(top):
            for name, field in model.model_fields.items():
                if not not_supported(field):
                    continue
                if model is not top:  # no endpoint of its own: pydantic's answer is the server's
                    continue
                value = refusing_value(model, name, body)
                r = httpx.post(f"{server.url}{path}", json={**body, name: value}, timeout=60)
                error = r.json().get("error", {})
                assert r.status_code == 400 and error.get("param") == name, (path, name, r.text)
                assert f"`{name}` is not supported by minillm" in error["message"], error
                default = field.get_default(call_default_factory=True)
                ok = httpx.post(f"{server.url}{path}", json={**body, name: default}, timeout=60)
                assert ok.status_code == 200, (path, name, default, ok.text[:300])
                refused.append(name)
    assert not missing, (f"fields neither implemented (in IMPLEMENTED, with a test that exists) "
                         f"nor marked NotSupported: {sorted(missing)}")
    assert len(refused) > 30  # the walk reached the markers


def proof(top: type[BaseModel], model: type[BaseModel], name: str) -> str:
    """A field's entry in IMPLEMENTED: `Model.field`; a request's own fields also by name."""
    return IMPLEMENTED.get(f"{model.__name__}.{name}",
                           IMPLEMENTED.get(name, "x::x") if model is top else "x::x")


def unproved(top: type[BaseModel]) -> set[str]:
    return {f"{model.__name__}.{name}" for model in models_inside(top)
            for name, field in model.model_fields.items()
            if not not_supported(field) and not proof_exists(proof(top, model, name))}


def test_the_walk_notices_a_forgotten_field():
    """The check above, on a model with one field added and forgotten."""
    class Extended(protocol.CompletionRequest):
        frobnicate: int = 0

    before = {name.split(".")[1] for name in unproved(protocol.CompletionRequest)}
    assert {name.split(".")[1] for name in unproved(Extended)} - before == {"frobnicate"}


# -- what each implemented field changes ----------------------------------------------------------
@pytest.mark.parametrize("field", sorted(EFFECTS))
def test_field_changes_the_result(server, field):
    path, part = EFFECTS[field]
    base = BASES[path]
    without = {**base, **{k: v for k, v in part.items() if k != field}}
    plain, changed = post(server, path, without), post(server, path, {**base, **part})
    if field == "user":
        assert "user 'alice'" in server.log()
    else:
        assert result(plain) != result(changed), (field, plain)


def test_priority_needs_the_priority_policy(server):
    """As vLLM: a priority other than 0 under FCFS scheduling is a 400, not ignored (the policy
    itself is tests/test_engine_api.py::test_priority_policy_runs_urgent_requests_first)."""
    r = httpx.post(f"{server.url}{C}", json={**BASES[C], "priority": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "priority", r.text
    post(server, C, {**BASES[C], "priority": 0})


def test_best_of_returns_the_likeliest_samples(server):
    """best_of=4, n=2 returns the two samples of the best cumulative logprob among the four
    that n=4 with the same seed draws (sample i is seeded seed + i either way)."""
    body = {**BASES[C], "ignore_eos": True}
    every = post(server, C, {**body, "n": 4, "logprobs": 0})["choices"]
    total = {c["text"]: sum(c["logprobs"]["token_logprobs"]) for c in every}
    best = sorted(total, key=total.get, reverse=True)[:2]
    got = post(server, C, {**body, "n": 2, "best_of": 4})
    assert [c["text"] for c in got["choices"]] == best, total
    r = httpx.post(f"{server.url}{C}", json={**body, "n": 2, "best_of": 4, "stream": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"
    r = httpx.post(f"{server.url}{C}", json={**body, "n": 3, "best_of": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"


def test_truncate_prompt_tokens(server, tokenizer):
    """The prompt's last 3 tokens alone: the same completion as sending just them."""
    ids = tokenizer.encode("The quick brown fox jumps over the lazy dog").ids
    body = {"max_tokens": 6, "temperature": 0}
    cut = post(server, C, {**body, "prompt": ids, "truncate_prompt_tokens": 3})
    tail = post(server, C, {**body, "prompt": ids[-3:]})
    assert cut["choices"][0]["text"] == tail["choices"][0]["text"]
    assert cut["usage"]["prompt_tokens"] == 3
    # a prompt longer than the context is served once cut to fit
    long = post(server, C, {**body, "prompt": ids * 20, "truncate_prompt_tokens": 5})
    assert long["usage"]["prompt_tokens"] == 5


def test_include_stop_str_in_output(server):
    body = {**BASES[C], "temperature": 0, "max_tokens": 16, "ignore_eos": True}
    text = post(server, C, body)["choices"][0]["text"]
    stop = text[3:6]
    at = text.find(stop)
    assert stop.strip(), text
    cut = post(server, C, {**body, "stop": stop})["choices"][0]
    kept = post(server, C, {**body, "stop": stop, "include_stop_str_in_output": True})["choices"][0]
    assert cut["text"] == text[:at] and kept["text"] == text[:at + len(stop)], (text, stop)
    assert kept["stop_reason"] == stop


def test_return_tokens_as_token_ids(server):
    body = {**BASES[C], "logprobs": 2, "return_tokens_as_token_ids": True}
    named = post(server, C, {**body, "return_tokens_as_token_ids": False})
    ids = post(server, C, body)
    plain_tokens = named["choices"][0]["logprobs"]["tokens"]
    id_tokens = ids["choices"][0]["logprobs"]["tokens"]
    assert len(id_tokens) == len(plain_tokens) == 8
    assert all(re.fullmatch(r"token_id:\d+", t) for t in id_tokens), id_tokens
    assert all(re.fullmatch(r"token_id:\d+", t) for top in ids["choices"][0]["logprobs"]
               ["top_logprobs"] for t in top)
    assert ids["choices"][0]["text"] == named["choices"][0]["text"]
    chat = post(server, CHAT, {**BASES[CHAT], "logprobs": True, "top_logprobs": 2,
                               "return_tokens_as_token_ids": True})
    content = chat["choices"][0]["logprobs"]["content"]
    assert all(re.fullmatch(r"token_id:\d+", e["token"]) for e in content), content


def test_request_id_names_the_response(server):
    assert post(server, C, {**BASES[C], "request_id": "mine-1"})["id"] == "cmpl-mine-1"
    assert post(server, CHAT, {**BASES[CHAT], "request_id": "mine-2"})["id"] == "chatcmpl-mine-2"
    r = httpx.post(f"{server.url}{C}", json={**BASES[C], "request_id": "two words"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "request_id"


def test_add_special_tokens(server, tokenizer):
    """This tokenizer adds BOS: completions do by default, chat (whose template would write its
    own) does not unless asked."""
    text = BASES[C]["prompt"]
    count = len(tokenizer.encode(text, add_special_tokens=False).ids)
    usage = post(server, C, BASES[C])["usage"]["prompt_tokens"]
    bare = post(server, C, {**BASES[C], "add_special_tokens": False})["usage"]["prompt_tokens"]
    assert (usage, bare) == (count + 1, count)
    chat = post(server, CHAT, BASES[CHAT])["usage"]["prompt_tokens"]
    with_bos = post(server, CHAT, {**BASES[CHAT], "add_special_tokens": True})
    assert with_bos["usage"]["prompt_tokens"] == chat + 1


def chat_prompt_tokens(server, tokenizer, body: dict, expected_text: str) -> None:
    """The chat request's prompt is `expected_text`, written by hand: same token count, and
    the same greedy completion as that text sent to /v1/completions."""
    greedy = {"max_tokens": 5, "temperature": 0}
    chat = post(server, CHAT, {**body, **greedy})
    ids = tokenizer.encode(expected_text, add_special_tokens=False).ids
    completion = post(server, C, {"prompt": ids, **greedy})
    assert chat["usage"]["prompt_tokens"] == len(ids), expected_text
    assert chat["choices"][0]["message"]["content"] == completion["choices"][0]["text"]


def test_continue_final_message(server, tokenizer):
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Once upon"}]
    chat_prompt_tokens(server, tokenizer, {"messages": messages, "continue_final_message": True},
                       "user: hi\nassistant: Once upon")
    chat_prompt_tokens(server, tokenizer, {"messages": messages},
                       "user: hi\nassistant: Once upon\nassistant:")
    r = httpx.post(f"{server.url}{CHAT}", json={"messages": messages,
                                                "continue_final_message": True,
                                                "add_generation_prompt": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message"


def test_chat_template_kwargs_and_names(server, tokenizer):
    """The template's `greeting` variable, a speaker's `name`, content given as parts."""
    messages = [{"role": "user", "name": "Ann", "content": [{"type": "text", "text": "h"},
                                                            {"type": "text", "text": "i"}]}]
    chat_prompt_tokens(server, tokenizer, {"messages": messages,
                                           "chat_template_kwargs": {"greeting": "Hello!"}},
                       "Hello!\nuser (Ann): hi\nassistant:")
    r = httpx.post(f"{server.url}{CHAT}", json={"messages": messages,
                                                "chat_template_kwargs": {"tokenize": True}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs.tokenize"


def test_tokenize_fields(server, tokenizer):
    """/tokenize: a prompt with and without BOS, messages with and without the generation
    prompt, the token strings."""
    ids = tokenizer.encode("hi there").ids
    assert post(server, "/tokenize", {"prompt": "hi there"})["tokens"] == ids
    assert post(server, "/tokenize", {"prompt": "hi there", "add_special_tokens": False,
                                      "model": "tiny"})["tokens"] == ids[1:]
    strs = post(server, "/tokenize", {"prompt": "hi there", "return_token_strs": True})
    assert strs["token_strs"] == [tokenizer.id_to_token(t) for t in ids]
    messages = [{"role": "user", "content": "hi"}]
    with_prompt = post(server, "/tokenize", {"messages": messages})["tokens"]
    without = post(server, "/tokenize", {"messages": messages, "add_generation_prompt": False})
    assert with_prompt == tokenizer.encode("user: hi\nassistant:", add_special_tokens=False).ids
    assert without["tokens"] == tokenizer.encode("user: hi\n", add_special_tokens=False).ids


def test_responses_top_p_and_temperature(server):
    """top_p close to 0 is greedy whatever the temperature: the Responses API applies it."""
    greedy = post(server, "/v1/responses", {"input": "hi", "max_output_tokens": 8,
                                            "temperature": 0})
    narrow = post(server, "/v1/responses", {"input": "hi", "max_output_tokens": 8,
                                            "temperature": 1.5, "top_p": 1e-6})
    text = [r["output"][0]["content"][0]["text"] for r in (greedy, narrow)]
    assert text[0] == text[1] and text[0]
    hot = {post(server, "/v1/responses", {"input": "hi", "max_output_tokens": 8,
                                          "temperature": 1.5})["output"][0]["content"][0]["text"]
           for _ in range(3)}
    assert hot != {text[0]}


@pytest.mark.parametrize("bias", [{str(VOCAB_SIZE): 1}, {"99999999999": 1}, {"5": 101},
                                  {"5": -100.5}, {"abc": 1}, {"-1": 1}, {"5": "high"}])
def test_logit_bias_out_of_range_is_a_400(server, bias):
    """Ids in the vocabulary, biases in [-100, 100], OpenAI's string keys."""
    r = httpx.post(f"{server.url}{C}", json={**BASES[C], "logit_bias": bias})
    assert r.status_code == 400, (bias, r.text)
    assert r.json()["error"]["param"].startswith("logit_bias"), r.text
    edges = {str(VOCAB_SIZE - 1): -100, "0": 100.0}
    post(server, C, {**BASES[C], "logit_bias": edges})


def test_stream_options_need_a_stream(server):
    """As vLLM: options for a stream in a request that is not streamed are a 400 (an empty
    object asks for nothing, so it passes)."""
    for path in (C, CHAT):
        r = httpx.post(f"{server.url}{path}", json={**BASES[path],
                                                    "stream_options": {"include_usage": True}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options", r.text
        post(server, path, {**BASES[path], "stream_options": {}})
