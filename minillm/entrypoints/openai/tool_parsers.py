"""Tool calls: the grammar that forces them, and reading them back out of the generated text.

A chat request's `tools` become `tool_calls` in one of three ways (vLLM's):

- `tool_choice: {"type": "function", "function": {"name": N}}`: the grammar is N's parameters
  schema, so the whole text is the call's arguments.
- `tool_choice: "required"`: the grammar is a JSON array of `{"name", "parameters"}` objects,
  each one of the tools (`required_tools_schema`), so the model may call several.
- `tool_choice: "auto"` with `--tool-call-parser hermes`: nothing is forced; the model writes
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks in its text, and what is
  outside them is the message's content.

Each reader is a pure function of a choice's text so far, `(content, calls)`, where a call's
arguments only ever grow. `ToolCallStream` turns two successive readings into OpenAI's deltas,
so a streamed response and a whole one come from the same code.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Callable

from minillm.entrypoints.openai.protocol import (DeltaFunctionCall, DeltaToolCall, FunctionCall,
                                                 ToolCall)

TOOL_CALL_PARSERS = ["hermes"]
# (name, arguments so far): what every reader returns for each call it has seen
Calls = list[tuple[str, str]]


def make_tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def required_tools_schema(tools: list[dict], parallel: bool = True) -> dict:
    """vLLM's schema for `tool_choice: "required"`: a non-empty array of calls, each naming one
    tool and giving parameters that follow that tool's schema (`{}` for a tool without one).
    The tools' `$defs` move to the top, where their `$ref`s point."""
    calls, defs = [], {}
    for tool in tools:
        parameters = dict(tool.get("parameters") or {"type": "object", "properties": {}})
        for name, schema in parameters.pop("$defs", {}).items():
            if defs.setdefault(name, schema) != schema:
                raise ValueError(f"tools: the definition {name!r} has different schemas in "
                                 "different tools")
        calls.append({"properties": {"name": {"type": "string", "enum": [tool["name"]]},
                                     "parameters": parameters},
                      "required": ["name", "parameters"]})
    schema = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": calls}}
    if not parallel:  # parallel_tool_calls: false
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


# -- readers: a choice's text so far -> (content, calls) ------------------------------------------
def named_reader(name: str) -> Callable[[str, bool], tuple[str, Calls]]:
    """The whole text is the arguments of the one function the request named."""
    return lambda text, finished: ("", [(name, text)])


# `[{"name":"f","parameters":` or `,{"name":...` (a call's head, up to its arguments)
CALL_HEAD = re.compile(r'\s*[\[,]\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"parameters"\s*:\s*')


def required_reader(text: str, finished: bool) -> tuple[str, Calls]:
    """The array the grammar forces: each call once its name is complete, with the raw text of
    its parameters so far (the JSON decoder finds where a complete one ends)."""
    calls, pos = [], 0
    while head := CALL_HEAD.match(text, pos):
        name, start = json.loads(head.group(1)), head.end()
        try:
            end = json.JSONDecoder().raw_decode(text, start)[1]
        except json.JSONDecodeError:  # the arguments are still being written
            calls.append((name, text[start:]))
            break
        calls.append((name, text[start:end]))
        pos = text.find("}", end) + 1  # past the call object's own closing brace
        if pos == 0:
            break
    return "", calls


HERMES_START, HERMES_END = "<tool_call>", "</tool_call>"


def hermes_reader(text: str, finished: bool) -> tuple[str, Calls]:
    """Hermes' format (Qwen, NousResearch): content, then `<tool_call>JSON</tool_call>` blocks.

    The content stops at the first block; while streaming, a tail that may be the start of
    `<tool_call>` is held back. A call is reported once its block is closed (or, at the end, if
    an unclosed block parses); text that is no valid call stays content."""
    start = text.find(HERMES_START)
    if start < 0:
        held = 0 if finished else _partial_suffix(text, HERMES_START)
        return text[:len(text) - held], []
    calls, pos = [], start
    while pos >= 0:
        body_start = pos + len(HERMES_START)
        end = text.find(HERMES_END, body_start)
        if end < 0 and not finished:
            break
        body = text[body_start:] if end < 0 else text[body_start:end]
        call = _hermes_call(body)
        if call is None:  # not a call: vLLM then returns the whole text as content
            return (text, []) if finished else (text[:start], calls)
        calls.append(call)
        pos = -1 if end < 0 else text.find(HERMES_START, end)
    return text[:start], calls


def _hermes_call(body: str) -> tuple[str, str] | None:
    try:
        call = json.loads(body)
        return call["name"], json.dumps(call.get("arguments", {}), ensure_ascii=False)
    except (ValueError, KeyError, TypeError):
        return None


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a beginning of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


READERS = {"hermes": hermes_reader}


# -- from readings to OpenAI's shapes -------------------------------------------------------------
class ToolCallStream:
    """One choice's tool calls, read again each time its text grows: what is new since the last
    reading, as OpenAI's stream sends it (a call's id, type and name first, then fragments of
    its arguments, each delta naming the call by its `index`)."""

    def __init__(self, reader: Callable[[str, bool], tuple[str, Calls]]):
        self.reader = reader
        self.ids: list[str] = []
        self.sent_arguments: list[int] = []
        self.sent_content = 0
        self.content, self.calls = "", []

    def read(self, text: str, finished: bool) -> tuple[str, list[DeltaToolCall]]:
        """(new content, new tool-call deltas) given the choice's whole text so far."""
        self.content, self.calls = self.reader(text, finished)
        new_content = self.content[self.sent_content:]
        self.sent_content = len(self.content)
        deltas = []
        for index, (name, arguments) in enumerate(self.calls):
            if index == len(self.ids):  # a new call
                self.ids.append(make_tool_call_id())
                self.sent_arguments.append(len(arguments))
                deltas.append(DeltaToolCall(index=index, id=self.ids[index], type="function",
                                            function=DeltaFunctionCall(name=name,
                                                                       arguments=arguments)))
            elif len(arguments) > self.sent_arguments[index]:
                fragment = arguments[self.sent_arguments[index]:]
                self.sent_arguments[index] = len(arguments)
                deltas.append(DeltaToolCall(index=index,
                                            function=DeltaFunctionCall(arguments=fragment)))
        return new_content, deltas

    def tool_calls(self) -> list[ToolCall]:
        """The calls of the last reading, whole (for a response that is not streamed)."""
        return [ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))
                for call_id, (name, arguments) in zip(self.ids, self.calls)]
