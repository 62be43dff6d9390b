"""`POST /v1/chat/completions`: messages rendered by the model's chat template, then generated.

A stream opens each choice with a `{"role": "assistant"}` delta, as OpenAI does, then sends
content deltas; the last chunk of a choice carries its `finish_reason`.

With `tools`, the tools go to the template too, and `tool_choice` decides how the text becomes
`tool_calls`: a grammar forces them, or a parser finds them (`tool_parsers`).
"""
from __future__ import annotations

import asyncio
import inspect
import time

from fastapi import Request
from fastapi.responses import StreamingResponse

from minillm.engine.async_engine import RequestStream
from minillm.entrypoints.openai.errors import OpenAIError
from minillm.entrypoints.openai.protocol import (AssistantMessage, ChatCompletionChoice,
                                                 ChatCompletionChunk, ChatCompletionRequest,
                                                 ChatCompletionResponse, ChatLogprob,
                                                 ChatLogprobs, ChatMessage, ChatStreamChoice,
                                                 DeltaMessage, NamedToolChoice, TopLogprob)
from minillm.entrypoints.openai.serving import (SSE_DONE, DeltaTracker, OpenAIServing, merge,
                                                prompt_logprobs, sse, stream_error, token_name,
                                                usage)
from minillm.entrypoints.openai.tool_parsers import (READERS, ToolCallStream, named_reader,
                                                     required_reader)
from minillm.outputs import CompletionOutput


class OpenAIServingChat(OpenAIServing):
    def __init__(self, *args, enable_auto_tool_choice: bool = False,
                 tool_call_parser: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if enable_auto_tool_choice and tool_call_parser is None:
            raise ValueError("--enable-auto-tool-choice requires --tool-call-parser")
        self.enable_auto_tool_choice = enable_auto_tool_choice
        self.tool_call_parser = tool_call_parser

    async def create(self, request: ChatCompletionRequest, raw: Request):
        model = self.model_name(request.model)
        if request.top_logprobs is not None and not request.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        self.tool_reader(request)  # "auto" without a parser: a 400 before any work
        tools = [tool.model_dump(exclude_none=True) for tool in request.tools or []]
        prompt = await self.truncated(await self.render(
            request.messages, request.add_generation_prompt, request.continue_final_message,
            request.chat_template_kwargs, request.add_special_tokens, tools or None),
            request.truncate_prompt_tokens)
        requested = (request.max_tokens if request.max_completion_tokens is None
                     else request.max_completion_tokens)
        top = (request.top_logprobs or 0) if request.logprobs else None
        params = self.sampling_params(
            request, self.max_tokens(requested, len(prompt["prompt_token_ids"])), top)
        await self.compile_grammar(request, params)
        request_id = f"chatcmpl-{self.request_id(request, raw)}"
        streams = await self.start(request_id, [prompt], [params], request.priority,
                                   request.stream)
        if request.stream:
            return StreamingResponse(self._stream(request, streams, request_id, model),
                                     media_type="text/event-stream")
        return await self._full(request, raw, streams, request_id, model)

    async def render(self, messages: list[ChatMessage], add_generation_prompt: bool,
                     continue_final_message: bool = False, template_kwargs: dict | None = None,
                     add_special_tokens: bool = False, tools: list[dict] | None = None) -> dict:
        """The prompt the model was trained to see: text and token ids. With
        `continue_final_message` the last message is left open, for the model to go on with;
        `template_kwargs` are more variables for the template (vLLM's `chat_template_kwargs`)."""
        if not self.tokenizer.chat_template:
            raise OpenAIError(400, "this model has no chat template: use /v1/completions")
        taken = set(inspect.signature(self.tokenizer.apply_chat_template).parameters)
        for key in template_kwargs or {}:  # variables only, not the renderer's own arguments
            if key in taken:
                raise OpenAIError(400, f"`{key}` cannot be set through chat_template_kwargs",
                                  f"chat_template_kwargs.{key}")
        conversation = [m.for_template() for m in messages]
        try:  # a template renders in Python: long messages take a while, so off the loop too
            text = await asyncio.to_thread(
                self.tokenizer.apply_chat_template, conversation, tokenize=False,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message, tools=tools,
                **(template_kwargs or {}))
        except Exception as e:  # the template's own checks (roles, order) raise
            raise OpenAIError(400, f"cannot apply the chat template: {e}", "messages") from e
        # The template already wrote any special tokens (BOS) the model expects.
        return {"prompt": text, "prompt_token_ids": await self.encode(text, add_special_tokens)}

    def tool_reader(self, request: ChatCompletionRequest):
        """How the request's text becomes tool calls (`tool_parsers`), or None: plain text."""
        choice = request.effective_tool_choice
        if choice == "none":  # the template still sees the tools, as in vLLM
            return None
        if isinstance(choice, NamedToolChoice):
            return named_reader(choice.function.name)
        if choice == "required":
            return required_reader
        if not self.enable_auto_tool_choice:  # "auto": vLLM's message
            raise OpenAIError(400, '"auto" tool choice requires --enable-auto-tool-choice and '
                                   '--tool-call-parser to be set', "tool_choice")
        return READERS[self.tool_call_parser]

    async def _full(self, request: ChatCompletionRequest, raw: Request,
                    streams: list[RequestStream], request_id: str, model: str):
        await self.finish(streams, raw)
        output, reader = streams[0].last, self.tool_reader(request)
        choices = []
        for c in output.outputs:
            message, finish_reason = AssistantMessage(content=c.text), c.finish_reason
            if reader is not None:
                calls = ToolCallStream(reader)
                content = calls.read(c.text, finished=True)[0]
                message = AssistantMessage(content=content or None, tool_calls=calls.tool_calls())
                finish_reason = _finish_reason(request, calls, c)
            choices.append(ChatCompletionChoice(
                index=c.index, message=message, logprobs=_logprobs(request, c, 0),
                finish_reason=finish_reason, stop_reason=c.stop_reason))
        return ChatCompletionResponse(id=request_id, model=model, choices=choices,
                                      usage=usage([output]),
                                      prompt_logprobs=prompt_logprobs(output,
                                                                      request.prompt_logprobs))

    async def _stream(self, request: ChatCompletionRequest, streams: list[RequestStream],
                      request_id: str, model: str):
        created, sent = int(time.time()), DeltaTracker()
        reader = self.tool_reader(request)
        calls = {i: ToolCallStream(reader) for i in range(request.n)} if reader else None

        def chunk(choices, **fields) -> str:
            return sse(ChatCompletionChunk(id=request_id, created=created, model=model,
                                           choices=choices, **fields))

        for index in range(request.n):
            yield chunk([ChatStreamChoice(index=index,
                                          delta=DeltaMessage(role="assistant", content=""))])
        async with self.tracked(streams):
            try:
                async for _, output in merge(streams):
                    for c in output.outputs:
                        part = sent.new_part((0, c.index), c)
                        if part is not None:
                            so_far = usage([output]) if request.continuous_usage else None
                            yield chunk([_stream_choice(request, c, *part, calls)],
                                        usage=so_far)
            except Exception as e:  # headers are sent: report in the stream, then end it
                yield stream_error(request_id, e)
                return
        if request.include_usage:
            yield chunk([], usage=usage([streams[0].last]))
        yield SSE_DONE


def _stream_choice(request: ChatCompletionRequest, c: CompletionOutput, text: str,
                   first_token: int, calls: dict[int, ToolCallStream] | None) -> ChatStreamChoice:
    delta, finish_reason = DeltaMessage(content=text or None), c.finish_reason
    if calls is not None:  # the text is read again for tool calls: content is what is left
        content, tool_deltas = calls[c.index].read(c.text, c.finish_reason is not None)
        delta = DeltaMessage(content=content or None, tool_calls=tool_deltas or None)
        finish_reason = _finish_reason(request, calls[c.index], c)
    return ChatStreamChoice(index=c.index, delta=delta,
                            logprobs=_logprobs(request, c, first_token),
                            finish_reason=finish_reason, stop_reason=c.stop_reason)


def _finish_reason(request: ChatCompletionRequest, calls: ToolCallStream,
                   c: CompletionOutput) -> str | None:
    """vLLM's: "tool_calls" when "auto" found calls or a "required" array was completed; a
    named call keeps the sequence's own reason."""
    choice = request.effective_tool_choice
    if c.finish_reason is not None and ((choice == "auto" and calls.calls) or (
            choice == "required" and c.finish_reason == "stop")):
        return "tool_calls"
    return c.finish_reason


def _logprobs(request: ChatCompletionRequest, c: CompletionOutput,
              first: int) -> ChatLogprobs | None:
    """OpenAI's chat shape: per token, its own entry and the `top_logprobs` best ones."""
    if not request.logprobs:
        return None
    content = []
    for token_id, entries in zip(c.token_ids[first:], c.logprobs[first:]):
        as_ids = request.return_tokens_as_token_ids
        best = sorted(entries.items(), key=lambda item: item[1].rank)[:request.top_logprobs or 0]
        chosen = entries[token_id]
        content.append(ChatLogprob(
            token=token_name(chosen, token_id, as_ids), logprob=chosen.logprob,
            bytes=list(chosen.decoded_token.encode()),
            top_logprobs=[TopLogprob(token=token_name(e, t, as_ids), logprob=e.logprob,
                                     bytes=list(e.decoded_token.encode())) for t, e in best]))
    return ChatLogprobs(content=content)
