"""`POST /v1/completions`: text in, text out, whole or streamed as server-sent events.

`prompt` may be one prompt (text or token ids) or a batch; each prompt becomes one engine
request, and its `n` samples are choices `i * n .. i * n + n - 1` of the response.
"""
from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import StreamingResponse

from minillm.engine.async_engine import RequestStream
from minillm.entrypoints.openai.errors import OpenAIError
from minillm.entrypoints.openai.protocol import (CompletionChoice, CompletionLogProbs,
                                                 CompletionRequest, CompletionResponse)
from minillm.entrypoints.openai.serving import (SSE_DONE, DeltaTracker, OpenAIServing, merge, sse,
                                                stream_error, usage)
from minillm.outputs import CompletionOutput, RequestOutput


class OpenAIServingCompletion(OpenAIServing):
    async def create(self, request: CompletionRequest, raw: Request):
        model = self.model_name(request.model)
        if request.echo and request.logprobs is not None:
            raise OpenAIError(400, "echo with logprobs is not supported: the engine does not "
                                   "compute the prompt's log-probabilities", "echo")
        prompts = [await self._prompt(p, request.echo) for p in _split(request.prompt)]
        params = [self.sampling_params(request, self.max_tokens(
            request.max_tokens, len(p["prompt_token_ids"])), request.logprobs) for p in prompts]
        request_id = f"cmpl-{raw.state.request_id}"
        streams = await self.start(request_id, prompts, params, request.priority,
                                   request.stream)
        if request.stream:
            return StreamingResponse(self._stream(request, streams, request_id, model),
                                     media_type="text/event-stream")
        return await self._full(request, raw, streams, request_id, model)

    async def _prompt(self, prompt: str | list[int], echo: bool) -> dict:
        if not prompt:  # "" would be the BOS token alone for many tokenizers
            raise OpenAIError(400, "the prompt is empty", "prompt")
        if isinstance(prompt, str):
            ids = await self.encode(prompt)
        else:  # token ids: their text is needed only to echo it
            self.check_token_ids(prompt, "prompt")
            ids, prompt = prompt, await self.decode(prompt) if echo else None
        return {"prompt": prompt, "prompt_token_ids": ids}

    async def _full(self, request: CompletionRequest, raw: Request, streams: list[RequestStream],
                    request_id: str, model: str) -> CompletionResponse:
        await self.finish(streams, raw)
        outputs = [s.last for s in streams]
        choices = [_choice(request, o, c, i * request.n + c.index, c.text, 0)
                   for i, o in enumerate(outputs) for c in o.outputs]
        return CompletionResponse(id=request_id, model=model, choices=choices,
                                  usage=usage(outputs))

    async def _stream(self, request: CompletionRequest, streams: list[RequestStream],
                      request_id: str, model: str):
        created, sent = int(time.time()), DeltaTracker()
        async with self.tracked(streams):
            try:
                async for i, output in merge(streams):
                    for c in output.outputs:
                        part = sent.new_part((i, c.index), c)
                        if part is None:
                            continue
                        choice = _choice(request, output, c, i * request.n + c.index, *part)
                        yield sse(CompletionResponse(id=request_id, created=created, model=model,
                                                     choices=[choice]))
            except Exception as e:  # headers are sent: report in the stream, then end it
                yield stream_error(request_id, e)
                return
        if request.include_usage:
            yield sse(CompletionResponse(id=request_id, created=created, model=model, choices=[],
                                         usage=usage([s.last for s in streams])))
        yield SSE_DONE


def _split(prompt) -> list[str | list[int]]:
    """One prompt or a batch of them, as a list of prompts."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [prompt]
    if not prompt:
        raise OpenAIError(400, "the prompt is empty", "prompt")
    return list(prompt)


def _choice(request: CompletionRequest, output: RequestOutput, c: CompletionOutput, index: int,
            text: str, first_token: int) -> CompletionChoice:
    """A choice carrying `text`, which starts at token `first_token` of the completion."""
    offset = len(c.text) - len(text)
    if request.echo and first_token == 0:
        text, offset = output.prompt + text, len(output.prompt)
    logprobs = (_logprobs(c, first_token, offset) if request.logprobs is not None else None)
    return CompletionChoice(index=index, text=text, logprobs=logprobs,
                            finish_reason=c.finish_reason, stop_reason=c.stop_reason)


def _logprobs(c: CompletionOutput, first: int, text_offset: int) -> CompletionLogProbs:
    """The legacy completions shape: parallel lists, one entry per token from `first` on."""
    result = CompletionLogProbs()
    for token_id, entries in zip(c.token_ids[first:], c.logprobs[first:]):
        chosen = entries[token_id]
        result.tokens.append(chosen.decoded_token)
        result.token_logprobs.append(chosen.logprob)
        result.top_logprobs.append({e.decoded_token: e.logprob for e in entries.values()})
        result.text_offset.append(text_offset)
        text_offset += len(chosen.decoded_token)
    return result
