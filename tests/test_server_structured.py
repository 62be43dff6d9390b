"""Structured outputs and tool calls through the server, with the official `openai` client.

The model is the small random llama checkpoint: it cannot write JSON, so every valid object
below is the grammar's doing. Schemas bound their strings and numbers (pattern, enum,
minimum/maximum) so that the grammar, not max_tokens, ends each answer: `pattern`, not
`maxLength`, because xgrammar 0.2.9 lets control characters (invalid JSON) into strings bounded
by `maxLength`. The first tests read tool calls out of crafted text (no server).
"""
from __future__ import annotations

import json
import re
import shutil

import httpx
import jsonschema
import openai
import pytest

from minillm.entrypoints.openai.tool_parsers import (ToolCallStream, hermes_reader, named_reader,
                                                     required_reader, required_tools_schema)
from server_process import ServerProcess

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Za-z ]{1,10}$"},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 99}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
PERSON = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                                           "age": {"type": "integer", "minimum": 0,
                                                   "maximum": 120},
                                           "pet": {"enum": ["cat", "dog", "none"]}},
          "required": ["name", "age", "pet"], "additionalProperties": False}
MESSAGES = [{"role": "user", "content": "The quick brown fox"}]


def read_all(reader, text: str, pieces: int = 1):
    """Feed `text` to a ToolCallStream in `pieces` growing prefixes; the deltas joined the way
    the openai client joins them, and the last reading's whole calls."""
    stream, content, calls = ToolCallStream(reader), "", {}
    cuts = [len(text) * (i + 1) // pieces for i in range(pieces)]
    for cut in cuts:
        new, deltas = stream.read(text[:cut], finished=cut == len(text))
        content += new
        for d in deltas:
            call = calls.setdefault(d.index, {"id": d.id, "name": d.function.name,
                                              "arguments": ""})
            assert d.id is None or d.id == call["id"]
            call["arguments"] += d.function.arguments or ""
    return content, [calls[i] for i in sorted(calls)], stream.tool_calls()


# -- reading tool calls out of text -----------------------------------------------------------
@pytest.mark.parametrize("pieces", [1, 3, 17, 200])
def test_hermes_blocks_streamed_in_any_pieces_join_to_the_whole_reading(pieces):
    text = ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Bath", '
            '"unit": "celsius"}}\n</tool_call>\n<tool_call>{"name": "add", "arguments": '
            '{"a": 1, "b": 2}}</tool_call>')
    content, streamed, whole = read_all(hermes_reader, text, pieces)
    assert content == "Let me check. "
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == [
        ("get_weather", {"city": "Bath", "unit": "celsius"}), ("add", {"a": 1, "b": 2})]
    assert [(c.function.name, c.function.arguments) for c in whole] == [
        (c["name"], c["arguments"]) for c in streamed]
    assert len({c.id for c in whole}) == 2 and all(c.id == s["id"] for c, s in zip(whole, streamed))


@pytest.mark.parametrize("text", ["Just words, no call.", "Ends with <tool_c", "a < b and c > d"])
def test_hermes_text_without_a_call_is_all_content(text):
    for pieces in (1, 4, len(text)):
        assert read_all(hermes_reader, text, pieces)[:2] == (text, [])


def test_hermes_holds_back_what_may_be_the_start_of_a_block():
    assert hermes_reader("Hello <tool", finished=False) == ("Hello ", [])
    assert hermes_reader("Hello <tool", finished=True) == ("Hello <tool", [])
    # an unclosed block is a call once the text ends, if it parses; else the text is content
    assert hermes_reader('<tool_call>{"name": "f", "arguments": {}}', True)[1] == [("f", "{}")]
    assert hermes_reader("<tool_call>{not json</tool_call>", True) == (
        "<tool_call>{not json</tool_call>", [])


@pytest.mark.parametrize("pieces", [1, 5, 40])
def test_required_array_streams_names_first_then_argument_fragments(pieces):
    calls = [("add", {"a": 3, "b": 40}), ("get_weather", {"city": 'Ba"th', "unit": "celsius"})]
    text = json.dumps([{"name": n, "parameters": p} for n, p in calls])
    content, streamed, whole = read_all(required_reader, text, pieces)
    assert content == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in whole] == calls


def test_required_reader_on_a_prefix():
    assert required_reader('[{"name": "add", "parameters": {"a": 1', False) == (
        "", [("add", '{"a": 1')])
    assert required_reader('[{"name": "ad', False) == ("", [])


def test_named_reader_and_the_required_schema():
    assert named_reader("f")('{"x": 1', False) == ("", [("f", '{"x": 1')])
    schema = required_tools_schema([t["function"] for t in TOOLS], parallel=False)
    good = [{"name": "add", "parameters": {"a": 1, "b": 2}}]
    jsonschema.validate(good, schema)
    for bad in ([], good * 2, [{"name": "add", "parameters": {"city": "x", "unit": "celsius"}}],
                [{"name": "nope", "parameters": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert "maxItems" not in required_tools_schema([t["function"] for t in TOOLS])


# -- through the server -----------------------------------------------------------------------
# The checkpoint's template, plus what a tool-calling template reads: the tools, an assistant's
# calls (arguments as a dict) and the call a tool message answers.
TEMPLATE = ("{% if tools %}tools: {{ tools | map(attribute='function.name') | join(',') }}"
            "{{ '\\n' }}{% endif %}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
            "{% for c in m.tool_calls or [] %} [{{ c.id }}: {{ c.function.name }} a="
            "{{ c.function.arguments.a }}]{% endfor %}{% if m.tool_call_id %} (answers "
            "{{ m.tool_call_id }}){% endif %}{{ '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def server(llama_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tools") / "model"
    shutil.copytree(llama_checkpoint, folder)
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    process = ServerProcess(folder, "--served-model-name", "tiny", "--max-model-len", "512")
    yield process
    process.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


@pytest.fixture(autouse=True)
def kv_cache_empty_after(request):
    yield
    if "server" in request.fixturenames:
        m = request.getfixturevalue("server").wait_idle()
        assert m["vllm:kv_cache_usage_perc"] == 0 and m["vllm:num_requests_running"] == 0


def chat(client, **kwargs):
    return client.chat.completions.create(**{"model": "tiny", "messages": MESSAGES,
                                             "max_tokens": 120, **kwargs})


@pytest.mark.parametrize("seed", [1, 2])
def test_response_format_json_schema_on_chat_and_completions(client, seed):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                 "strict": True}}
    out = chat(client, response_format=rf, temperature=1.0, seed=seed).choices[0]
    assert out.finish_reason == "stop", out
    jsonschema.validate(json.loads(out.message.content), PERSON)
    text = client.completions.create(model="tiny", prompt="The quick", max_tokens=120, seed=seed,
                                     extra_body={"response_format": rf}).choices[0].text
    jsonschema.validate(json.loads(text), PERSON)


def test_response_format_json_object_and_text(client):
    out = chat(client, response_format={"type": "json_object"}, temperature=0, max_tokens=60)
    text = out.choices[0].message.content
    assert text.startswith("{"), text
    if out.choices[0].finish_reason == "stop":  # free strings inside may run to max_tokens
        assert isinstance(json.loads(text), dict)
    plain = chat(client, temperature=0, max_tokens=8)
    as_text = chat(client, temperature=0, max_tokens=8, response_format={"type": "text"})
    assert as_text.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize("body", [
    {"structured_outputs": {"regex": r"[a-z]{2,6}@[a-z]{2,4}\.(com|org)"}},
    {"guided_regex": r"[a-z]{2,6}@[a-z]{2,4}\.(com|org)"},
    {"structured_outputs": {"choice": ["yes", "no", "it depends"]}},
    {"guided_choice": ["yes", "no", "it depends"], "guided_decoding_backend": "xgrammar"},
    {"structured_outputs": {"json": PERSON}},
    {"guided_json": json.dumps(PERSON)},
    {"structured_outputs": {"grammar": 'root ::= "(" [0-9] [0-9]? " + " [0-9] ")"'}},
    {"structured_outputs": {"json_object": True}},
    {"guided_grammar": 'root ::= "(" [0-9] [0-9]? " + " [0-9] ")"'},
])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_vllm_structured_outputs_and_guided_fields(client, body, endpoint):
    kwargs = dict(model="tiny", max_tokens=80, temperature=1.0, seed=3, n=2, extra_body=body)
    if endpoint == "chat":
        texts = [c.message.content for c in client.chat.completions.create(
            messages=MESSAGES, **kwargs).choices]
    else:
        texts = [c.text for c in client.completions.create(prompt="Once", **kwargs).choices]
    spec = next(iter(body.values()))
    kind = next(iter(spec)) if isinstance(spec, dict) else next(iter(body))
    for text in texts:
        if kind in ("regex", "guided_regex"):
            assert re.fullmatch(r"[a-z]{2,6}@[a-z]{2,4}\.(com|org)", text), text
        elif kind in ("choice", "guided_choice"):
            assert text in ["yes", "no", "it depends"], text
        elif kind in ("json", "guided_json"):
            jsonschema.validate(json.loads(text), PERSON)
        elif kind == "json_object":  # free strings inside may run to max_tokens
            assert text.startswith("{"), text
        else:
            assert re.fullmatch(r"\([0-9]{1,2} \+ [0-9]\)", text), text


def error_of(excinfo) -> dict:
    error = excinfo.value.response.json()["error"]
    assert error["code"] == excinfo.value.status_code == 400
    return error


@pytest.mark.parametrize("body, param", [
    ({"structured_outputs": {"regex": "([a-z"}}, "structured_outputs"),
    ({"guided_regex": "([a-z"}, "guided_regex"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"structured_outputs": {"json": {"type": 5}}}, "structured_outputs"),
    ({"structured_outputs": {"grammar": "root ::= "}}, "structured_outputs"),
    ({"guided_grammar": "root ::= nothing"}, "guided_grammar"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format"),
    ({"response_format": {"type": "structural_tag"}}, "response_format.type"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
    ({"structured_outputs": {"regex": "a"}, "guided_regex": "b"}, "guided_regex"),
    ({"guided_json": {}, "response_format": {"type": "json_object"}}, "response_format"),
    ({"structured_outputs": {"whitespace_pattern": " "}}, "structured_outputs"),
    ({"guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),
    ({"guided_decoding_backend": "outlines"}, "guided_decoding_backend"),
    ({"structured_outputs": {"regex": "a"}, "min_tokens": 2}, "min_tokens"),
])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_bad_constraints_are_a_400_naming_the_field_and_others_run_on(client, body, param,
                                                                      endpoint):
    create = (client.chat.completions.create if endpoint == "chat"
              else client.completions.create)
    prompt = {"messages": MESSAGES} if endpoint == "chat" else {"prompt": "Once"}
    with pytest.raises(openai.BadRequestError) as excinfo:
        create(model="tiny", max_tokens=5, extra_body=body, **prompt)
    error = error_of(excinfo)
    assert error["param"] == param, error
    assert param.split(".")[0] in error["message"], error
    assert client.completions.create(model="tiny", prompt="Once", max_tokens=3).choices[0].text


def test_plain_requests_beside_a_grammar_get_the_tokens_they_get_alone(server, client):
    """Sent at once, so the engine batches them: the grammar's mask touches its own row only."""
    import concurrent.futures

    prompts = ["The quick brown", "A serving system", "Paged attention", "The lazy dog"]
    plain = dict(model="tiny", max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    alone = [client.completions.create(prompt=p, **plain).choices[0].text for p in prompts]
    guided = dict(model="tiny", max_tokens=120, temperature=1.0, seed=0,
                  extra_body={"guided_json": PERSON})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(client.completions.create, prompt=p, **guided) for p in prompts]
        jobs += [pool.submit(client.completions.create, prompt=p, **plain) for p in prompts]
        results = [job.result() for job in jobs]
    assert [r.choices[0].text for r in results[4:]] == alone
    for r in results[:4]:
        jsonschema.validate(json.loads(r.choices[0].text), PERSON)


# -- tools through the server -----------------------------------------------------------------
def test_named_tool_choice_returns_a_call_whose_arguments_follow_the_schema(client):
    for name in SCHEMAS:
        for seed in (0, 1):
            out = chat(client, tools=TOOLS, temperature=1.0, seed=seed, tool_choice={
                "type": "function", "function": {"name": name}}).choices[0]
            assert out.finish_reason == "stop", out  # vLLM keeps a named call's own reason
            (call,) = out.message.tool_calls
            assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
            assert call.function.name == name
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[name])
            assert not out.message.content


def test_required_tool_choice_returns_calls_to_the_given_tools(client):
    out = chat(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
               temperature=1.0, seed=4).choices[0]
    assert out.finish_reason == "tool_calls", out
    (call,) = out.message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    # parallel calls allowed: the random model keeps adding calls; those finished validate
    out = chat(client, tools=TOOLS, tool_choice="required", temperature=1.0, seed=4,
               max_tokens=60).choices[0]
    assert out.message.tool_calls, out
    for call in out.message.tool_calls[:-1]:
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("tool_choice", [{"type": "function", "function": {"name": "add"}},
                                         "required"])
def test_streamed_tool_calls_join_to_the_whole_response(client, tool_choice):
    kwargs = dict(tools=TOOLS, tool_choice=tool_choice, temperature=1.0, seed=5,
                  parallel_tool_calls=False)
    whole = chat(client, **kwargs).choices[0]
    calls, finish, first = {}, None, {}
    for chunk in chat(client, stream=True, **kwargs):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            assert not choice.delta.content
            for d in choice.delta.tool_calls or []:
                if d.index not in calls:  # its first delta: the id, the type and the name
                    assert d.id and d.type == "function" and d.function.name, d
                    calls[d.index] = {"name": d.function.name, "arguments": ""}
                    first[d.index] = d.id
                else:
                    assert d.id is None and d.function.name is None, d
                calls[d.index]["arguments"] += d.function.arguments or ""
    assert finish == whole.finish_reason
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls]


def test_auto_tool_choice_needs_the_server_flags(client):
    for kwargs in ({"tool_choice": "auto"}, {}):  # tools alone mean "auto", as in vLLM
        with pytest.raises(openai.BadRequestError) as excinfo:
            chat(client, tools=TOOLS, **kwargs)
        error = error_of(excinfo)
        assert error["message"] == ('"auto" tool choice requires --enable-auto-tool-choice and '
                                    '--tool-call-parser to be set') and error["param"] == "tool_choice"


def test_tool_choice_none_ignores_the_tools(client):
    out = chat(client, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=8).choices[0]
    assert out.message.tool_calls is None and out.message.content
    assert out.finish_reason == "length"


@pytest.mark.parametrize("body, param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": []}, "tools"),
    ({"tools": TOOLS, "tool_choice": "required", "guided_regex": "a"}, "guided_regex"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "nope"}}}}}], "tool_choice": "required"},
     "tools"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{
        "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages.0.tool_calls"),
])
def test_bad_tool_requests_are_a_400_naming_the_field(server, body, param):
    r = httpx.post(f"{server.url}/v1/chat/completions",
                   json={"model": "tiny", "messages": MESSAGES, "max_tokens": 5, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_conversation_with_tool_calls_and_tool_results(server, client):
    """An assistant's tool calls (arguments as a dict) and the tool's answer reach the template,
    and so do the tools."""
    messages = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "add", "arguments": '{"a": 17, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "19"}]
    ids = httpx.post(f"{server.url}/tokenize", json={"messages": messages}).json()["tokens"]
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": ids}).json()["prompt"]
    assert text == ("user: The quick brown fox\nassistant:  [call_1: add a=17]\n"
                    "tool: 19 (answers call_1)\nassistant:"), text
    kwargs = dict(model="tiny", messages=messages, max_tokens=4, temperature=0)
    with_tools = client.chat.completions.create(tools=TOOLS, tool_choice="none", **kwargs)
    without = client.chat.completions.create(**kwargs)
    extra = len(httpx.post(f"{server.url}/tokenize", json={
        "prompt": "tools: get_weather,add\n", "add_special_tokens": False}).json()["tokens"])
    assert with_tools.usage.prompt_tokens == without.usage.prompt_tokens + extra
