"""`POST /v1/completions`: text in, text out, whole or streamed as server-sent events.

`prompt` may be one prompt (text or token ids) or a batch; each prompt becomes one engine
request, and its `n` samples are choices `i * n .. i * n + n - 1` of the response.

`echo` with `logprobs` returns the prompt's own logprobs in front of the completion's (the
engine's `prompt_logprobs`; the first prompt token has none: null). This is how lm-eval scores
multiple-choice benchmarks. vLLM's `prompt_logprobs: k` returns them in its own shape too, in
each choice. `max_tokens: 0` with `echo` returns the prompt alone, as vLLM does:
the engine runs one token, which the response leaves out.
"""
from __future__ import annotations

import time
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from minillm.engine.async_engine import RequestStream
from minillm.entrypoints.openai.errors import OpenAIError
from minillm.entrypoints.openai.protocol import (CompletionChoice, CompletionLogProbs,
                                                 CompletionRequest, CompletionResponse)
from minillm.entrypoints.openai.serving import (SSE_DONE, DeltaTracker, OpenAIServing, merge,
                                                prompt_entries, prompt_logprobs, sse,
                                                stream_error, token_name, usage)
from minillm.outputs import CompletionOutput, Logprob, RequestOutput


class OpenAIServingCompletion(OpenAIServing):
    def __init__(self, *args, stream=None):
        """`stream`: the streamed body's function, `stream_completion` unless given (lab 8's
        hook, `build_app(completion_stream=...)`)."""
        super().__init__(*args)
        self.stream = stream or stream_completion

    async def create(self, request: CompletionRequest, raw: Request):
        model = self.model_name(request.model)
        if request.max_tokens == 0 and not request.echo:
            raise OpenAIError(400, "max_tokens must be at least 1 (0 only with echo: the prompt "
                                   "alone)", "max_tokens")
        prompts = [await self.truncated(await self._prompt(p, request),
                                        request.truncate_prompt_tokens)
                   for p in _split(request.prompt)]
        params = [self._sampling_params(request, len(p["prompt_token_ids"])) for p in prompts]
        await self.compile_grammar(request, params[0])  # one grammar for all the prompts
        request_id = f"cmpl-{self.request_id(request, raw)}"
        streams = await self.start(request_id, prompts, params, request.priority,
                                   request.stream)
        if request.stream:
            return StreamingResponse(self.stream(self, request, streams, request_id, model),
                                     media_type="text/event-stream")
        return await self._full(request, raw, streams, request_id, model)

    def _sampling_params(self, request: CompletionRequest, num_prompt_tokens: int):
        """The engine's settings; echo with logprobs also asks for the prompt's logprobs (the
        more of `logprobs` and `prompt_logprobs`: each is cut to its own k in the response)."""
        asked = 1 if request.max_tokens == 0 else request.max_tokens  # 0: echo alone
        max_tokens = self.max_tokens(asked, num_prompt_tokens)
        params = self.sampling_params(request, max_tokens, request.logprobs)
        if request.echo and request.logprobs is not None:
            params.prompt_logprobs = max(request.logprobs, request.prompt_logprobs or 0)
        return params

    async def _prompt(self, prompt: str | list[int], request: CompletionRequest) -> dict:
        if not prompt:  # "" would be the BOS token alone for many tokenizers
            raise OpenAIError(400, "the prompt is empty", "prompt")
        if isinstance(prompt, str):
            ids = await self.encode(prompt, request.add_special_tokens)
        else:  # token ids: their text is needed only to echo it
            self.check_token_ids(prompt, "prompt")
            ids, prompt = prompt, await self.decode(prompt) if request.echo else None
        return {"prompt": prompt, "prompt_token_ids": ids}

    async def _full(self, request: CompletionRequest, raw: Request, streams: list[RequestStream],
                    request_id: str, model: str) -> CompletionResponse:
        await self.finish(streams, raw)
        outputs = [s.last for s in streams]
        choices = [_choice(request, o, c, i * request.n + c.index, c.text, 0,
                           self.tokenizer.decode)
                   for i, o in enumerate(outputs) for c in o.outputs]
        return CompletionResponse(id=request_id, model=model, choices=choices,
                                  usage=usage(outputs))


async def stream_completion(serving: OpenAIServingCompletion, request: CompletionRequest,
                            streams: list[RequestStream], request_id: str,
                            model: str) -> AsyncIterator[str]:
    """A streamed completion's body, as server-sent events: one chunk per sample that has new
    text (a delta), `finish_reason` on its last; with `stream_options.include_usage` a chunk of
    usage alone; then `[DONE]`. A client that hangs up ends it (Starlette stops the generator)
    and `tracked` aborts what did not finish, so its KV blocks come back at once. Lab 8 has
    learners write it (`build_app(completion_stream=...)` mounts theirs)."""
    created, sent = int(time.time()), DeltaTracker()
    async with serving.tracked(streams):
        try:
            async for i, output in merge(streams):
                for c in output.outputs:
                    part = sent.new_part((i, c.index), c)
                    if part is None:
                        continue
                    choice = _choice(request, output, c, i * request.n + c.index, *part,
                                     serving.tokenizer.decode)
                    so_far = (usage([s.last for s in streams if s.last])
                              if request.continuous_usage else None)
                    yield sse(CompletionResponse(id=request_id, created=created, model=model,
                                                 choices=[choice], usage=so_far))
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
            text: str, first_token: int, decode) -> CompletionChoice:
    """A choice carrying `text`, which starts at token `first_token` of the completion; the
    first one carries the echoed prompt in front. `decode`: the tokenizer's, for the text of
    a token without logprobs."""
    offset = len(c.text) - len(text)
    token_ids, entries = c.token_ids[first_token:], (c.logprobs or [])[first_token:]
    if request.max_tokens == 0:  # echo alone: the one token the engine ran is left out
        text, token_ids, entries = "", [], []
    if request.echo and first_token == 0:
        text, offset = output.prompt + text, 0
        token_ids = output.prompt_token_ids + token_ids
        entries = prompt_entries(output, request.logprobs) + entries
    logprobs = (_logprobs(token_ids, entries, offset, decode, request.return_tokens_as_token_ids)
                if request.logprobs is not None else None)
    return CompletionChoice(index=index, text=text, logprobs=logprobs,
                            finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                            prompt_logprobs=prompt_logprobs(output, request.prompt_logprobs))


def _logprobs(token_ids: list[int], entries: list[dict[int, Logprob] | None], text_offset: int,
              decode, as_ids: bool | None) -> CompletionLogProbs:
    """The legacy completions shape: parallel lists, one entry per token. A token without
    entries (the prompt's first: nothing comes before it) has null logprobs. `as_ids`: tokens
    named "token_id:1234" (vLLM's `return_tokens_as_token_ids`)."""
    result = CompletionLogProbs()
    for token_id, entry in zip(token_ids, entries):
        text = entry[token_id].decoded_token if entry else decode([token_id])
        result.tokens.append(f"token_id:{token_id}" if as_ids else text)
        result.token_logprobs.append(entry[token_id].logprob if entry else None)
        result.top_logprobs.append({token_name(e, t, as_ids): e.logprob for t, e in entry.items()}
                                   if entry else None)
        result.text_offset.append(text_offset)
        text_offset += len(text)
    return result
