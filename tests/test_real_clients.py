"""Structured outputs and tool calls as real clients use them: the `openai` SDK's helpers and
langchain-openai, unmodified, against a server started with vLLM's tool flags
(`--enable-auto-tool-choice --tool-call-parser hermes`).

The model is the small random llama checkpoint: what it writes is valid only because the
grammar allows nothing else; the pydantic models bound their fields so the grammar ends the
answer before max_tokens does.
"""
from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from server_process import ServerProcess

MESSAGES = [{"role": "user", "content": "The quick brown fox"}]
# The hermes format, forced by a regex so that the random model writes it
HERMES_ADD = (r'Sure\. <tool_call>\n\{"name": "add", "arguments": \{"a": [1-9], "b": [1-9]\}\}'
              r'\n</tool_call>')


class Person(BaseModel):
    name: str = Field(pattern=r"^[a-z]{1,8}$")  # not max_length: see test_server_structured
    age: int = Field(ge=0, le=120)
    pet: Literal["cat", "dog", "none"]


class Add(BaseModel):
    """Add two numbers."""

    a: int = Field(ge=0, le=99)
    b: int = Field(ge=0, le=99)


ADD_TOOL = openai.pydantic_function_tool(Add, name="add")


@pytest.fixture(scope="module")
def server(llama_checkpoint):
    process = ServerProcess(llama_checkpoint, "--served-model-name", "tiny", "--max-model-len",
                            "512", "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    yield process
    process.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


@pytest.fixture
def llm(server):
    return ChatOpenAI(base_url=f"{server.url}/v1", api_key="none", model="tiny", max_retries=0,
                      temperature=1.0, seed=2, max_tokens=120)


@pytest.fixture(autouse=True)
def kv_cache_empty_after(server):
    yield
    m = server.wait_idle()
    assert m["vllm:kv_cache_usage_perc"] == 0 and m["vllm:num_requests_running"] == 0


# -- the openai SDK ---------------------------------------------------------------------------
def test_logit_bias_through_the_sdk(client):
    """+100 on a token at temperature 0 makes it every token; -100 on the greedy first token
    removes it. Tokens come back as "token_id:N" (vLLM's return_tokens_as_token_ids)."""
    extra = {"return_tokens_as_token_ids": True, "ignore_eos": True}
    kwargs = dict(model="tiny", prompt="The quick brown fox", max_tokens=4, temperature=0,
                  logprobs=0, extra_body=extra)
    greedy = client.completions.create(**kwargs).choices[0].logprobs.tokens
    forced = client.completions.create(**kwargs, logit_bias={"42": 100})
    assert forced.choices[0].logprobs.tokens == ["token_id:42"] * 4, forced
    banned = client.completions.create(**kwargs, logit_bias={greedy[0].split(":")[1]: -100})
    assert banned.choices[0].logprobs.tokens[0] != greedy[0], (greedy, banned)
    chat = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3,
                                          temperature=0, logprobs=True, logit_bias={"42": 100},
                                          extra_body=extra)
    assert [t.token for t in chat.choices[0].logprobs.content] == ["token_id:42"] * 3, chat


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parse_with_a_pydantic_model_returns_a_valid_object(client, seed):
    out = client.chat.completions.parse(model="tiny", messages=MESSAGES, response_format=Person,
                                        max_tokens=120, temperature=1.0, seed=seed)
    person = out.choices[0].message.parsed
    assert isinstance(person, Person), out
    assert Person.model_validate_json(out.choices[0].message.content) == person


@pytest.mark.parametrize("seed", [0, 1])
def test_parse_with_a_named_tool_returns_validated_arguments(client, seed):
    out = client.chat.completions.parse(
        model="tiny", messages=MESSAGES, tools=[ADD_TOOL], max_tokens=60, temperature=1.0,
        seed=seed, tool_choice={"type": "function", "function": {"name": "add"}})
    (call,) = out.choices[0].message.tool_calls
    assert call.function.name == "add"
    assert isinstance(call.function.parsed_arguments, Add), call
    Add.model_validate_json(call.function.arguments)


def test_json_schema_stream_joins_into_valid_json(client):
    schema = {"type": "json_schema", "json_schema": {
        "name": "person", "schema": Person.model_json_schema(), "strict": True}}
    text, chunks = "", 0
    for chunk in client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True,
                                                response_format=schema, max_tokens=120,
                                                temperature=1.0, seed=3):
        for choice in chunk.choices:
            text += choice.delta.content or ""
        chunks += 1
    assert chunks > 3, "streamed in pieces"
    Person.model_validate_json(text)
    # the SDK's own stream helper parses it too
    with client.chat.completions.stream(model="tiny", messages=MESSAGES, response_format=Person,
                                        max_tokens=120, temperature=1.0, seed=3) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == Person.model_validate_json(text)


def test_hermes_tool_calls_are_parsed_whole_and_streamed(client):
    kwargs = dict(model="tiny", messages=MESSAGES, tools=[ADD_TOOL], tool_choice="auto",
                  max_tokens=80, temperature=1.0, seed=1,
                  extra_body={"structured_outputs": {"regex": HERMES_ADD}})
    out = client.chat.completions.create(**kwargs).choices[0]
    assert out.finish_reason == "tool_calls", out
    assert out.message.content == "Sure. "
    (call,) = out.message.tool_calls
    assert call.function.name == "add"
    Add.model_validate_json(call.function.arguments)
    content, arguments, names, finish = "", "", [], None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                assert d.index == 0
                names += [d.function.name] if d.function.name else []
                arguments += d.function.arguments or ""
    assert (content, names, finish) == ("Sure. ", ["add"], "tool_calls")
    assert json.loads(arguments) == json.loads(call.function.arguments)


def test_auto_without_a_call_is_plain_content(client):
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[ADD_TOOL],
                                         max_tokens=8, temperature=0).choices[0]
    assert out.message.tool_calls is None and out.message.content
    assert out.finish_reason == "length"


# -- langchain-openai -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output_returns_objects(llm, method):
    structured = llm.with_structured_output(Person, method=method)
    for _ in range(2):
        person = structured.invoke("The quick brown fox")
        assert isinstance(person, Person), person


def test_langchain_bind_tools_returns_messages_with_tool_calls(llm):
    forced = llm.bind_tools([Add], tool_choice="Add").invoke("The quick brown fox")
    assert isinstance(forced, AIMessage)
    (call,) = forced.tool_calls
    assert call["name"] == "Add" and Add.model_validate(call["args"])
    required = llm.bind_tools([Add, Person], tool_choice="any",
                              parallel_tool_calls=False).invoke("The quick brown fox")
    (call,) = required.tool_calls
    {"Add": Add, "Person": Person}[call["name"]].model_validate(call["args"])
    auto = llm.bind_tools([Add]).invoke("The quick brown fox")  # "auto": the hermes parser
    assert isinstance(auto, AIMessage) and auto.content and auto.tool_calls == []
