"""`POST /v1/chat/completions`: messages rendered by the model's chat template, then generated.

A stream opens each choice with a `{"role": "assistant"}` delta, as OpenAI does, then sends
content deltas; the last chunk of a choice carries its `finish_reason`.
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
                                                 DeltaMessage, TopLogprob)
from minillm.entrypoints.openai.serving import (SSE_DONE, DeltaTracker, OpenAIServing, merge, sse,
                                                stream_error, token_name, usage)
from minillm.outputs import CompletionOutput


class OpenAIServingChat(OpenAIServing):
    async def create(self, request: ChatCompletionRequest, raw: Request):
        model = self.model_name(request.model)
        if request.top_logprobs is not None and not request.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        prompt = await self.truncated(await self.render(
            request.messages, request.add_generation_prompt, request.continue_final_message,
            request.chat_template_kwargs, request.add_special_tokens),
            request.truncate_prompt_tokens)
        requested = (request.max_tokens if request.max_completion_tokens is None
                     else request.max_completion_tokens)
        top = (request.top_logprobs or 0) if request.logprobs else None
        params = self.sampling_params(
            request, self.max_tokens(requested, len(prompt["prompt_token_ids"])), top)
        request_id = f"chatcmpl-{self.request_id(request, raw)}"
        streams = await self.start(request_id, [prompt], [params], request.priority,
                                   request.stream)
        if request.stream:
            return StreamingResponse(self._stream(request, streams, request_id, model),
                                     media_type="text/event-stream")
        return await self._full(request, raw, streams, request_id, model)

    async def render(self, messages: list[ChatMessage], add_generation_prompt: bool,
                     continue_final_message: bool = False, template_kwargs: dict | None = None,
                     add_special_tokens: bool = False) -> dict:
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
                continue_final_message=continue_final_message, **(template_kwargs or {}))
        except Exception as e:  # the template's own checks (roles, order) raise
            raise OpenAIError(400, f"cannot apply the chat template: {e}", "messages") from e
        # The template already wrote any special tokens (BOS) the model expects.
        return {"prompt": text, "prompt_token_ids": await self.encode(text, add_special_tokens)}

    async def _full(self, request: ChatCompletionRequest, raw: Request,
                    streams: list[RequestStream], request_id: str, model: str):
        await self.finish(streams, raw)
        output = streams[0].last
        choices = [ChatCompletionChoice(
            index=c.index, message=AssistantMessage(content=c.text),
            logprobs=_logprobs(request, c, 0), finish_reason=c.finish_reason,
            stop_reason=c.stop_reason) for c in output.outputs]
        return ChatCompletionResponse(id=request_id, model=model, choices=choices,
                                      usage=usage([output]))

    async def _stream(self, request: ChatCompletionRequest, streams: list[RequestStream],
                      request_id: str, model: str):
        created, sent = int(time.time()), DeltaTracker()

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
                            yield chunk([_stream_choice(request, c, *part)], usage=so_far)
            except Exception as e:  # headers are sent: report in the stream, then end it
                yield stream_error(request_id, e)
                return
        if request.include_usage:
            yield chunk([], usage=usage([streams[0].last]))
        yield SSE_DONE


def _stream_choice(request: ChatCompletionRequest, c: CompletionOutput, text: str,
                   first_token: int) -> ChatStreamChoice:
    return ChatStreamChoice(index=c.index, delta=DeltaMessage(content=text or None),
                            logprobs=_logprobs(request, c, first_token),
                            finish_reason=c.finish_reason, stop_reason=c.stop_reason)


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
