"""Request and response bodies of the OpenAI API, as pydantic models (with vLLM's extras).

Field names, defaults and shapes follow OpenAI's API reference, so the official `openai` client
and tools written for vLLM work unchanged. vLLM's extra sampling fields (`top_k`, `min_p`,
`repetition_penalty`, `stop_token_ids`, `ignore_eos`, `min_tokens`, `priority`, ...) are
accepted too. Unknown fields are ignored, as OpenAI does.

Nothing known is silently ignored: a field of OpenAI's or vLLM's API that minillm does not
implement is declared here all the same, marked `NotSupported()`, and any value but its default
is a 400 that names it (`suffix` is not supported by minillm). tests/test_server_fields.py
walks every request model: each field is either marked so, or listed there with the test that
shows it working. A new field must be one or the other.

Checks that need only the body are made here, so they show in the OpenAPI schema: ranges, no
NaN or Infinity (JSON parsers accept them), integers that fit the engine's 64-bit tensors, no
lone surrogate in any string. The checks that need the model (vocabulary, context length) are
the server's; the rest are `SamplingParams`' own.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from minillm.sampling_params import SamplingParams
from minillm.structured_output import StructuredOutputsParams

MAX_LOGPROBS = 20  # OpenAI's limit for top_logprobs; vLLM's default max_logprobs
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
TokenId = Annotated[int, Field(ge=0, le=INT64_MAX)]  # the vocabulary bound is the server's check


def lone_surrogate(value, path: str = "") -> str | None:
    """Where in a parsed JSON body a string holds a lone surrogate (`"\\ud800"` is valid JSON
    but not text: no tokenizer and no response can encode it), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            where = lone_surrogate(key, path) or lone_surrogate(item, f"{path}.{key}".lstrip("."))
            if where:
                return where
    elif isinstance(value, list):
        for i, item in enumerate(value):
            where = lone_surrogate(item, f"{path}.{i}".lstrip("."))
            if where:
                return where
    return None


@dataclass(frozen=True)
class NotSupported:
    """Marks a request field minillm knows but does not implement: a value other than the
    field's default (or one of `accepted`) is a 400 naming the field.
    Use: `suffix: Annotated[str | None, NotSupported()] = None`."""

    accepted: tuple = ()  # values besides the default that mean "nothing asked for"


def not_supported(field) -> NotSupported | None:
    """A model field's `NotSupported` marker, or None when the field is implemented."""
    return next((m for m in field.metadata if isinstance(m, NotSupported)), None)


class RequestBody(BaseModel):
    """What every request body shares: finite floats, text that is text, and a 400 for a field
    that asks for something minillm does not do."""

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data):
        where = lone_surrogate(data)
        if where:
            raise PydanticCustomError("lone_surrogate", "{param}: not valid Unicode text (a lone "
                                      "surrogate)", {"param": where})
        return data

    @model_validator(mode="after")
    def _refuse_not_supported(self):
        for name in sorted(self.model_fields_set):
            field = type(self).model_fields[name]
            marker = not_supported(field)
            value = getattr(self, name)
            if marker and value != field.get_default(call_default_factory=True) \
                    and value not in marker.accepted:
                raise PydanticCustomError("not_supported", "{param}: `{param}` is not supported "
                                          "by minillm", {"param": name})
        return self


Unsupported = Annotated[Any, NotSupported()]  # any JSON value; only the default is accepted


def is_none(value) -> bool:
    """For `Field(exclude_if=...)`: an unset field is left out of a chunk, not sent as null."""
    return value is None


class StreamOptions(BaseModel):
    include_usage: bool = False  # one last chunk with `choices: []` and the request's usage
    continuous_usage_stats: bool = False  # vLLM's: the usage so far on every chunk too


# vLLM's pattern for ids a client gives (as the X-Request-Id header): printable ASCII
REQUEST_ID = Field(None, min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
LogitBias = dict[Annotated[str, Field(pattern=r"^[0-9]{1,19}$")],  # OpenAI sends "1234": 5.0
                 Annotated[float, Field(ge=-100, le=100)]]


class JsonSchemaResponseFormat(BaseModel):
    name: str
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")  # (`schema` would shadow BaseModel's)
    strict: bool | None = None  # the grammar follows the schema exactly either way


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: free text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaResponseFormat | None = None


class StructuredOutputsRequest(RequestBody):
    """vLLM's `structured_outputs` object: one constraint (`minillm.structured_output`)."""

    json_: str | dict | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    # vLLM's backend knobs: known, not implemented (xgrammar here always writes compact JSON)
    disable_fallback: Unsupported = None
    disable_any_whitespace: Unsupported = None
    disable_additional_properties: Unsupported = None
    whitespace_pattern: Unsupported = None
    structural_tag: Unsupported = None


# vLLM's older names for the structured_outputs fields
GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                 "guided_grammar": "grammar"}


class SamplingFields(RequestBody):
    """What completions and chat requests share: sampling, stopping, and vLLM's extras."""

    model: str | None = None  # None: the (first) served model
    n: int = Field(1, ge=1, le=128)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    seed: Int64 | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM's extras
    top_k: int = Field(0, ge=-1, le=INT64_MAX)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0, le=INT64_MAX)
    skip_special_tokens: bool = True
    priority: Int64 = 0  # lower runs sooner, with --scheduling-policy priority
    logit_bias: LogitBias | None = None  # token id -> bias; the ids are checked by the server
    best_of: int | None = Field(None, ge=1, le=128)  # sample this many, return the n likeliest
    truncate_prompt_tokens: int | None = Field(None, ge=1, le=INT64_MAX)  # keep the last k
    include_stop_str_in_output: bool = False
    return_tokens_as_token_ids: bool | None = None  # logprobs' tokens as "token_id:1234"
    # the prompt's own logprobs, the top k of each position (vLLM's; not with a stream)
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    request_id: str | None = REQUEST_ID  # names the request (else X-Request-Id, else random)
    # structured outputs: at most one of these asks (see `structured_outputs_params`)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsRequest | None = None
    guided_json: str | dict | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: Annotated[Any, NotSupported(accepted=("xgrammar", "auto"))] = None
    guided_whitespace_pattern: Unsupported = None
    # known, not implemented (a 400 unless left at the default)
    use_beam_search: Annotated[bool, NotSupported()] = False
    length_penalty: Annotated[float, NotSupported()] = 1.0
    spaces_between_special_tokens: Annotated[bool, NotSupported()] = True
    allowed_token_ids: Unsupported = None
    bad_words: Annotated[Any, NotSupported(accepted=([],))] = None
    logits_processors: Unsupported = None
    cache_salt: Unsupported = None
    kv_transfer_params: Unsupported = None
    vllm_xargs: Unsupported = None
    mm_processor_kwargs: Unsupported = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Usage on every chunk: vLLM asks for both options."""
        return self.include_usage and self.stream_options.continuous_usage_stats

    @model_validator(mode="after")
    def _check_streaming(self):
        # vLLM's rules: options for a stream need a stream; the n best of best_of samples are
        # known only at the end (OpenAI: "results cannot be streamed")
        if self.stream_options and self.stream_options.model_fields_set and not self.stream:
            raise PydanticCustomError("stream_options", "{param}: `stream_options` can only be "
                                      "given with `stream: true`", {"param": "stream_options"})
        if self.best_of is not None and self.best_of > self.n and self.stream:
            raise PydanticCustomError("best_of", "{param}: `best_of` above `n` cannot be "
                                      "streamed", {"param": "best_of"})
        if self.prompt_logprobs is not None and self.stream:
            raise PydanticCustomError("prompt_logprobs", "{param}: `prompt_logprobs` are not "
                                      "available when `stream=True`", {"param": "prompt_logprobs"})
        return self

    def structured_outputs_params(self) -> tuple[StructuredOutputsParams | None, str | None]:
        """The grammar the output must follow and the field that asked for it, or (None, None).

        `response_format`, `structured_outputs` and the `guided_*` fields each may ask for one;
        two constraints at once are refused (ValueError naming the field), never one dropped.
        """
        asked = []  # (field, {kind: specification})
        if self.structured_outputs is not None:
            kinds = self.structured_outputs.model_dump(by_alias=True, exclude_none=True)
            asked.append(("structured_outputs", kinds))
        for name, kind in GUIDED_FIELDS.items():
            if getattr(self, name) is not None:
                asked.append((name, {kind: getattr(self, name)}))
        response_format = self.response_format
        if response_format is not None and response_format.type == "json_object":
            asked.append(("response_format", {"json_object": True}))
        elif response_format is not None and response_format.type == "json_schema":
            if response_format.json_schema is None or response_format.json_schema.schema_ is None:
                raise ValueError("response_format of type json_schema needs json_schema.schema")
            asked.append(("response_format", {"json": response_format.json_schema.schema_}))
        kinds = [kind for _, ks in asked for kind in ks]
        if len(kinds) > 1:
            raise ValueError(f"{asked[-1][0]}: only one structured-output constraint per request "
                             f"(got {', '.join(kinds)} from {', '.join(f for f, _ in asked)})")
        if not asked:
            return None, None
        field, spec = asked[0]
        return StructuredOutputsParams(**spec), field

    def sampling_params(self, max_tokens: int, logprobs: int | None,
                        structured_outputs: StructuredOutputsParams | None = None
                        ) -> SamplingParams:
        """The engine's settings; SamplingParams raises ValueError for out-of-range values."""
        bias = {int(t): b for t, b in self.logit_bias.items()} if self.logit_bias else None
        return SamplingParams(
            n=self.n, best_of=self.best_of, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, min_p=self.min_p, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty,
            seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids,
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos, max_tokens=max_tokens, min_tokens=self.min_tokens,
            logprobs=logprobs, prompt_logprobs=self.prompt_logprobs, logit_bias=bias,
            truncate_prompt_tokens=self.truncate_prompt_tokens,
            skip_special_tokens=self.skip_special_tokens, structured_outputs=structured_outputs)


# -- completions ------------------------------------------------------------------------------
def _prompt_kind(prompt) -> str:
    """Which of the four prompt shapes a body means, so a bad one is reported against that
    shape only (`prompt.0: Input should be greater than or equal to 0`)."""
    if isinstance(prompt, str):
        return "str"
    first = prompt[0] if isinstance(prompt, list) and prompt else None
    return {str: "list[str]", list: "list[list[int]]"}.get(type(first), "list[int]")


# one prompt (text or token ids) or a batch of them
Prompt = Annotated[Union[Annotated[str, Tag("str")],
                         Annotated[list[str], Tag("list[str]")],
                         Annotated[list[TokenId], Tag("list[int]")],
                         Annotated[list[list[TokenId]], Tag("list[list[int]]")]],
                   Discriminator(_prompt_kind)]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    # None: up to the context length; 0 (with echo only): the prompt alone
    max_tokens: int | None = Field(16, ge=0, le=INT64_MAX)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False  # return the prompt in front of the completion
    add_special_tokens: bool = True  # vLLM's: the tokenizer's BOS in front of a text prompt
    suffix: Unsupported = None
    prompt_embeds: Unsupported = None


class CompletionLogProbs(BaseModel):
    text_offset: list[int] = []
    token_logprobs: list[float | None] = []
    tokens: list[str] = []
    top_logprobs: list[dict[str, float] | None] = []


class PromptLogprob(BaseModel):
    logprob: float
    rank: int  # 1: the most likely token
    decoded_token: str


# vLLM's shape: per prompt token, {token id: its logprob} (the token's own and the top k), the
# first token's null (nothing comes before it)
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None  # "stop" or "length"
    stop_reason: int | str | None = None  # vLLM: the stop string or token id that ended it
    prompt_logprobs: PromptLogprobs | None = Field(None, exclude_if=is_none)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens found in the prefix cache


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = Field(None, exclude_if=is_none)  # a chunk without it leaves it out


# -- chat -------------------------------------------------------------------------------------
class ContentPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class DeltaFunctionCall(BaseModel):
    name: str | None = Field(None, exclude_if=is_none)
    arguments: str | None = Field(None, exclude_if=is_none)


class DeltaToolCall(BaseModel):
    """A streamed piece of tool call `index`: its id, type and name come in its first piece."""

    index: int
    id: str | None = Field(None, exclude_if=is_none)
    type: Literal["function"] | None = Field(None, exclude_if=is_none)
    function: DeltaFunctionCall


class FunctionDefinition(BaseModel):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema
    strict: bool | None = None  # the grammar follows the schema exactly either way


class ChatTool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatMessage(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a `tool` message: the call it answers

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    @field_validator("tool_calls")
    @classmethod
    def _arguments_are_json(cls, calls):
        for call in calls or []:
            try:
                json.loads(call.function.arguments)
            except ValueError as e:
                raise ValueError(f"a tool call's arguments are not valid JSON ({e})") from None
        return calls

    def for_template(self) -> dict:
        """What the chat template sees: the role, the text, the speaker's name if given, and
        tool calls with their arguments as a dict (transformers' and vLLM's convention), or the
        id of the call a `tool` message answers."""
        named = {"name": self.name} if self.name else {}
        if self.tool_call_id is not None:
            named["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            named["tool_calls"] = [{"id": c.id, "type": c.type, "function": {
                "name": c.function.name, "arguments": json.loads(c.function.arguments)}}
                for c in self.tool_calls]
        return {"role": self.role, "content": self.text(), **named}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64_MAX)  # the current name
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX)  # the deprecated one, still sent
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # vLLM's extras for the chat template
    add_generation_prompt: bool = True  # end the prompt with the assistant's turn
    continue_final_message: bool = False  # the last (assistant) message is continued, not closed
    add_special_tokens: bool = False  # BOS on top of the template's own (it usually has one)
    chat_template_kwargs: dict[str, Any] | None = None  # more variables for the template
    chat_template: Unsupported = None
    documents: Unsupported = None
    echo: Unsupported = False
    include_reasoning: Annotated[bool, NotSupported()] = True
    # OpenAI's, known, not implemented
    store: Annotated[bool | None, NotSupported(accepted=(False,))] = None
    metadata: Unsupported = None
    service_tier: Annotated[Any, NotSupported(accepted=("auto", "default"))] = None
    modalities: Annotated[Any, NotSupported(accepted=(["text"],))] = None
    audio: Unsupported = None
    prediction: Unsupported = None
    reasoning_effort: Unsupported = None
    verbosity: Unsupported = None
    web_search_options: Unsupported = None
    tools: list[ChatTool] | None = Field(None, min_length=1)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True  # false: at most one call (with "required")
    functions: Unsupported = None
    function_call: Unsupported = None
    prompt_cache_key: Unsupported = None
    safety_identifier: Unsupported = None

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        """vLLM's default: "auto" when tools are given, else "none"."""
        return self.tool_choice or ("auto" if self.tools else "none")

    @model_validator(mode="after")
    def _check_tool_choice(self):
        # vLLM's rules and messages
        choice = self.tool_choice
        if choice not in (None, "none") and not self.tools:
            raise PydanticCustomError("tool_choice", "{param}: when using `tool_choice`, "
                                      "`tools` must be set", {"param": "tool_choice"})
        if isinstance(choice, NamedToolChoice) and choice.function.name not in [
                tool.function.name for tool in self.tools]:
            raise PydanticCustomError("tool_choice", "{param}: the tool specified in "
                                      "`tool_choice` does not match any of the specified `tools`",
                                      {"param": "tool_choice"})
        return self

    def structured_outputs_params(self) -> tuple[StructuredOutputsParams | None, str | None]:
        """As for completions, and a forced tool call's grammar (`tool_parsers`): the named
        tool's parameters, or for "required" an array of calls to any of the tools."""
        from minillm.entrypoints.openai.tool_parsers import required_tools_schema

        asked, field = super().structured_outputs_params()
        choice = self.effective_tool_choice
        if choice != "required" and not isinstance(choice, NamedToolChoice):
            return asked, field
        if asked is not None:
            raise ValueError(f"{field}: you can only either use constraints for structured "
                             f"outputs or tools, not both")
        if choice == "required":
            schema = required_tools_schema([t.function.model_dump() for t in self.tools],
                                           self.parallel_tool_calls)
        else:
            tool = next(t for t in self.tools if t.function.name == choice.function.name)
            schema = tool.function.parameters or {"type": "object", "properties": {}}
        return StructuredOutputsParams(json=schema), "tools"

    @model_validator(mode="after")
    def _check_generation_prompt(self):
        if self.continue_final_message and self.add_generation_prompt \
                and "add_generation_prompt" in self.model_fields_set:
            raise PydanticCustomError("continue_final_message", "{param}: cannot set both "
                                      "`continue_final_message` and `add_generation_prompt` to "
                                      "true", {"param": "continue_final_message"})
        return self


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: list[ChatLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] = Field([], exclude_if=lambda calls: not calls)


class DeltaMessage(BaseModel):
    """A stream's increment: `role` on a choice's first chunk only, as OpenAI and vLLM send."""

    role: str | None = Field(None, exclude_if=is_none)
    content: str | None = Field(None, exclude_if=is_none)
    tool_calls: list[DeltaToolCall] | None = Field(None, exclude_if=is_none)


class ChatCompletionChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    prompt_logprobs: PromptLogprobs | None = Field(None, exclude_if=is_none)  # as vLLM: here


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = Field(None, exclude_if=is_none)


# -- responses (a minimal /v1/responses: text in, text out) ----------------------------------
class InputText(BaseModel):
    type: Literal["input_text", "output_text"] = "input_text"
    text: str


class InputMessage(BaseModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


class ResponsesRequest(RequestBody):
    """OpenAI's Responses API, the text part: the rest is declared and refused."""

    model: str | None = None
    input: str | list[InputMessage]
    instructions: str | None = None  # a system message in front of the input
    max_output_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    user: str | None = None
    request_id: str | None = REQUEST_ID  # vLLM's: the response is resp_<request_id>
    background: Annotated[bool | None, NotSupported(accepted=(False,))] = None
    conversation: Unsupported = None
    include: Annotated[Any, NotSupported(accepted=([],))] = None
    max_tool_calls: Unsupported = None
    metadata: Unsupported = None
    parallel_tool_calls: Annotated[bool | None, NotSupported(accepted=(True,))] = None
    previous_response_id: Unsupported = None
    prompt: Unsupported = None
    prompt_cache_key: Unsupported = None
    reasoning: Unsupported = None
    safety_identifier: Unsupported = None
    service_tier: Annotated[Any, NotSupported(accepted=("auto", "default"))] = None
    store: Annotated[bool | None, NotSupported(accepted=(False,))] = None  # nothing is kept
    stream_options: Unsupported = None
    text: Annotated[Any, NotSupported(accepted=({"format": {"type": "text"}},))] = None
    tool_choice: Annotated[Any, NotSupported(accepted=("none", "auto"))] = None
    tools: Annotated[Any, NotSupported(accepted=([],))] = None
    top_logprobs: Annotated[Any, NotSupported(accepted=(0,))] = None
    truncation: Annotated[Any, NotSupported(accepted=("disabled",))] = None
    priority: Annotated[int, NotSupported()] = 0
    cache_salt: Unsupported = None
    mm_processor_kwargs: Unsupported = None

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        """The engine's settings: pydantic has checked every range SamplingParams checks."""
        return SamplingParams(temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p,
                              max_tokens=max_tokens)

    def messages(self) -> list[ChatMessage]:
        said = ([InputMessage(role="user", content=self.input)] if isinstance(self.input, str)
                else self.input)
        system = [ChatMessage(role="system", content=self.instructions)] * bool(self.instructions)
        return system + [ChatMessage(role=m.role, content=m.text()) for m in said]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list = []


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]  # cached_tokens
    output_tokens: int
    output_tokens_details: dict[str, int]  # reasoning_tokens (none here)
    total_tokens: int


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    incomplete_details: dict[str, str] | None = None  # {"reason": "max_output_tokens"}
    error: None = None
    model: str
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    output: list[OutputMessage]
    parallel_tool_calls: bool = True
    tool_choice: str = "none"
    tools: list = []
    metadata: dict = {}
    usage: ResponseUsage | None = None


class ResponseEvent(BaseModel):
    """One server-sent event of a streamed response (`type` names it; the fields it carries
    depend on the type, as in OpenAI's API)."""

    type: str
    sequence_number: int
    response: ResponseObject | None = Field(None, exclude_if=is_none)
    output_index: int | None = Field(None, exclude_if=is_none)
    content_index: int | None = Field(None, exclude_if=is_none)
    item_id: str | None = Field(None, exclude_if=is_none)
    item: OutputMessage | None = Field(None, exclude_if=is_none)
    part: OutputText | None = Field(None, exclude_if=is_none)
    delta: str | None = Field(None, exclude_if=is_none)
    text: str | None = Field(None, exclude_if=is_none)
    logprobs: list | None = Field(None, exclude_if=is_none)


# -- models, tokenizer, errors ----------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "minillm"
    root: str | None = None  # vLLM: the checkpoint; here the served name (no path revealed)
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(RequestBody):
    """vLLM's /tokenize: either a `prompt` or chat `messages` (rendered by the chat template)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestBody):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class VersionResponse(BaseModel):
    version: str


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo
