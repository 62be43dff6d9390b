"""Request and response bodies of the OpenAI API, as pydantic models (with vLLM's extras).

Field names, defaults and shapes follow OpenAI's API reference, so the official `openai` client
and tools written for vLLM work unchanged. vLLM's extra sampling fields (`top_k`, `min_p`,
`repetition_penalty`, `stop_token_ids`, `ignore_eos`, `min_tokens`, `priority`, ...) are
accepted too. Unknown fields are ignored, as OpenAI does.

Checks that need only the body are made here, so they show in the OpenAPI schema: ranges, no
NaN or Infinity (JSON parsers accept them), integers that fit the engine's 64-bit tensors, no
lone surrogate in any string. The checks that need the model (vocabulary, context length) are
the server's; the rest are `SamplingParams`' own.
"""
from __future__ import annotations

import time
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from minillm.sampling_params import SamplingParams

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


class RequestBody(BaseModel):
    """What every request body shares: finite floats, text that is text."""

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data):
        where = lone_surrogate(data)
        if where:
            raise PydanticCustomError("lone_surrogate", "{param}: not valid Unicode text (a lone "
                                      "surrogate)", {"param": where})
        return data


class StreamOptions(BaseModel):
    include_usage: bool = False  # one last chunk with `choices: []` and the request's usage


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

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        """The engine's settings; SamplingParams raises ValueError for out-of-range values."""
        return SamplingParams(
            n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            min_p=self.min_p, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty,
            seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos, max_tokens=max_tokens, min_tokens=self.min_tokens,
            logprobs=logprobs, skip_special_tokens=self.skip_special_tokens)


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


class CompletionLogProbs(BaseModel):
    text_offset: list[int] = []
    token_logprobs: list[float | None] = []
    tokens: list[str] = []
    top_logprobs: list[dict[str, float] | None] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None  # "stop" or "length"
    stop_reason: int | str | None = None  # vLLM: the stop string or token id that ended it


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
    usage: UsageInfo | None = None


# -- chat -------------------------------------------------------------------------------------
class ContentPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64_MAX)  # the current name
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX)  # the deprecated one, still sent
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True  # vLLM's extra: end the prompt with the assistant's turn


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


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None


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
    usage: UsageInfo | None = None


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
