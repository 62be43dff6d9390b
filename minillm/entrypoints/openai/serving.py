"""What completions and chat share: admission, prompt checks, the request's life cycle, SSE.

A request's life, whichever endpoint it came from:

    validate ─► tokenize (off the event loop), check the context length ─► admit (queue full?)
      ─► engine.add_request ─► read the RequestStream ─► response / SSE chunks
      ─► on the way out: finished → metrics; anything else (client gone, error) → abort

Every value is checked before the engine sees it (the body by pydantic, then the vocabulary,
the context length and `SamplingParams` here): a bad value is the client's 400, never a failed
engine step that would take the requests running beside it down too.

Tokenizing a long prompt takes a while (seconds for megabytes), so it runs in a worker thread
(the Rust tokenizer lets go of the GIL): the event loop keeps serving every other request.

The abort on the way out is what frees a vanished client's KV blocks at once. A streaming
response notices the disconnect itself (Starlette cancels the body when the client leaves); a
non-streaming one has nothing to send until the end, so it watches the connection meanwhile.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import AsyncIterator

from fastapi import Request
from pydantic import BaseModel

from minillm.engine.async_engine import AsyncEngine, RequestAborted, RequestStream
from minillm.entrypoints.openai.errors import OpenAIError, error_body
from minillm.entrypoints.openai.metrics import ServerMetrics
from minillm.entrypoints.openai.protocol import (PromptLogprob, PromptLogprobs,
                                                 PromptTokensDetails, UsageInfo)
from minillm.outputs import CompletionOutput, Logprob, RequestOutput
from minillm.sampling_params import SamplingParams

logger = logging.getLogger("minillm.server")


class OpenAIServing:
    def __init__(self, engine: AsyncEngine, metrics: ServerMetrics, served_model_names: list[str],
                 max_waiting_requests: int | None, stream_interval: int = 1):
        self.engine, self.metrics = engine, metrics
        self.served_model_names = served_model_names
        self.max_waiting_requests = max_waiting_requests
        self.stream_interval = stream_interval
        self.tokenizer = engine.engine.tokenizer
        self.max_model_len = engine.engine.max_model_len
        self.vocab_size = engine.engine.model.config.vocab_size

    # -- checks -------------------------------------------------------------------------------
    def model_name(self, requested: str | None) -> str:
        """The served name to answer with; 404 for a model this server does not serve."""
        if requested is None:
            return self.served_model_names[0]
        if requested not in self.served_model_names:
            raise OpenAIError(404, f"The model `{requested}` does not exist.", "model")
        return requested

    def max_tokens(self, requested: int | None, num_prompt_tokens: int) -> int:
        """`max_tokens` within the context length (None: all the room left); 400 if over."""
        room = self.max_model_len - num_prompt_tokens
        if requested is None and room >= 1:
            return room
        if requested is None or requested > room:
            asked = num_prompt_tokens + (requested or 1)
            raise OpenAIError(400, (
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {asked} tokens ({num_prompt_tokens} in the prompt, "
                f"{asked - num_prompt_tokens} in the completion). Please reduce the length of "
                f"the prompt or completion."), "max_tokens")
        return requested

    def check_token_ids(self, ids: list[int], param: str) -> None:
        bad = [t for t in ids if t >= self.vocab_size]  # pydantic refused negative ones
        if bad:
            raise OpenAIError(400, f"token ids {bad[:5]} are outside the vocabulary "
                                   f"[0, {self.vocab_size})", param)

    # Safe in worker threads beside the engine thread's decoding: a fast tokenizer's
    # encode/decode share no mutable state unless truncation or padding settings change, and
    # they never do here.
    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return await asyncio.to_thread(self.tokenizer.encode, text,
                                       add_special_tokens=add_special_tokens)

    async def decode(self, ids: list[int]) -> str:
        self.check_token_ids(ids, "tokens")
        return await asyncio.to_thread(self.tokenizer.decode, ids)

    def sampling_params(self, request, max_tokens: int, logprobs: int | None) -> SamplingParams:
        """The engine's settings; SamplingParams' ValueError (`top_k must be ...`) is a 400
        naming the field."""
        try:
            params = request.sampling_params(max_tokens, logprobs,
                                             request.structured_outputs_params()[0])
        except ValueError as e:
            field = str(e).split(" ", 1)[0].rstrip(":").split(".")[0]  # structured_outputs.x
            raise OpenAIError(400, str(e), field if field in type(request).model_fields
                              else None) from e
        self.check_token_ids(list(params.logit_bias or {}), "logit_bias")
        return params

    async def compile_grammar(self, request, params: SamplingParams) -> None:
        """Compile the request's grammar before the engine sees it, in a worker thread (the
        engine thread then finds it in its cache, and steps on meanwhile): one that does not
        compile is a 400 naming the field that asked for it."""
        if params.structured_outputs is None:
            return
        grammars = self.engine.engine.grammars
        try:
            await asyncio.to_thread(grammars.compiled, *params.structured_outputs.key())
        except ValueError as e:
            field = request.structured_outputs_params()[1]
            raise OpenAIError(400, f"{field}: {e}", field) from e

    async def truncated(self, prompt: dict, keep: int | None) -> dict:
        """vLLM's `truncate_prompt_tokens`: only the prompt's last `keep` tokens (the part next
        to the output), before the context length is checked; the text is theirs."""
        ids = prompt["prompt_token_ids"]
        if keep is None or len(ids) <= keep:
            return prompt
        ids = ids[-keep:]
        text = await asyncio.to_thread(self.tokenizer.decode, ids) if prompt["prompt"] else None
        return {"prompt": text, "prompt_token_ids": ids}

    def request_id(self, request, raw: Request) -> str:
        """The body's `request_id` (vLLM's), else the X-Request-Id header, else a random one;
        logged with the request's `user`, which is what OpenAI's `user` is for."""
        request_id = request.request_id or raw.state.request_id
        if request.user is not None:
            logger.info("request %s: user %r", request_id, request.user)
        return request_id

    def _admit(self, params: list[SamplingParams]) -> None:
        """Refuse work the server cannot queue: better a fast 429 than an unbounded wait. The
        queue is counted in sequences: a request for n samples of each of p prompts is p * n."""
        if not self.engine.is_alive:
            raise OpenAIError(503, "the engine loop is not running")
        limit, count = self.max_waiting_requests, sum(p.num_samples for p in params)
        if limit is None:
            return
        if count > limit:
            raise OpenAIError(400, f"this request asks for {count} sequences ({len(params)} "
                                   f"prompts, n={params[0].n}); the server queues at most "
                                   f"{limit} (--max-waiting-requests)", "n")
        if self.engine.num_waiting + count > limit:
            raise OpenAIError(429, f"the server already has {self.engine.num_waiting} sequences "
                                   f"waiting (--max-waiting-requests {limit}); retry later",
                              headers={"Retry-After": "1"})

    # -- the request's life -------------------------------------------------------------------
    async def start(self, request_id: str, prompts: list[dict], params: list[SamplingParams],
                    priority: int, stream: bool) -> list[RequestStream]:
        """Add one engine request per prompt (ids `request_id`, or `request_id-i` for a batch);
        all or none: if one is refused, those already added are aborted (400). A streamed
        response reads every `stream_interval` tokens, a whole one only the end."""
        if priority and self.engine.engine.config.scheduling_policy != "priority":
            raise OpenAIError(400, "`priority` needs a server started with --scheduling-policy "
                                   "priority (as in vLLM)", "priority")
        self._admit(params)
        ids = [request_id] if len(prompts) == 1 else [f"{request_id}-{i}"
                                                        for i in range(len(prompts))]
        arrival, streams = time.monotonic(), []
        interval = self.stream_interval if stream else None
        try:
            for rid, prompt, p in zip(ids, prompts, params):
                streams.append(await self.engine.add_request(rid, prompt, p, priority, arrival,
                                                             interval))
        except BaseException as e:
            for stream in streams:
                self.engine.abort(stream.request_id)
            if isinstance(e, ValueError):
                raise OpenAIError(400, str(e)) from e
            if isinstance(e, (RequestAborted, RuntimeError)):  # shutting down, or loop dead
                raise OpenAIError(503, str(e)) from e
            raise
        for p in params:
            self.metrics.record_params(p)
        return streams

    async def finish(self, streams: list[RequestStream], raw: Request) -> None:
        """Read `streams` to their end, for a non-streamed response (its `last` outputs)."""
        async with self.tracked(streams, raw):
            try:
                async for _ in merge(streams):
                    pass  # outputs are cumulative: the last one of each stream is the answer
            except RequestAborted as e:  # shutting down, or the client is gone (then unheard)
                raise OpenAIError(503, str(e)) from e

    @contextlib.asynccontextmanager
    async def tracked(self, streams: list[RequestStream], raw: Request | None = None):
        """Around reading `streams`: record finished requests, abort the rest on the way out.

        With `raw`, also abort the moment the client disconnects (for non-streaming responses).
        """
        watcher = asyncio.create_task(self._abort_on_disconnect(raw, streams)) if raw else None
        try:
            yield
        finally:
            if watcher:
                watcher.cancel()
            for stream in streams:
                if stream.last is not None and stream.last.finished:
                    self.metrics.record_finished(stream.last)
                else:
                    logger.info("request %s aborted before it finished: its KV blocks are freed",
                                stream.request_id)
                    self.engine.abort(stream.request_id)
                    self.metrics.record_aborted()

    async def _abort_on_disconnect(self, raw: Request, streams: list[RequestStream]) -> None:
        # The body has been read, so the next ASGI message can only be the disconnect.
        while (await raw.receive())["type"] != "http.disconnect":
            pass
        for stream in streams:
            self.engine.abort(stream.request_id)


async def merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """`(prompt index, output)` from several streams as they arrive; one's error ends all."""
    if len(streams) == 1:  # the usual case: no tasks, no queue
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for output in stream:
                queue.put_nowait((i, output, None))
        except Exception as e:
            queue.put_nowait((i, None, e))
        queue.put_nowait((i, None, None))  # this stream is done

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, output, error = await queue.get()
            if error is not None:
                raise error
            if output is None:
                remaining -= 1
            else:
                yield i, output
    finally:
        for task in tasks:
            task.cancel()


class DeltaTracker:
    """How much of each choice a stream has sent, so each chunk carries only what is new."""

    def __init__(self):
        self.sent: dict[tuple[int, int], tuple[int, int]] = {}  # (prompt, choice) -> chars, tokens
        self.done: set[tuple[int, int]] = set()

    def new_part(self, key: tuple[int, int], c: CompletionOutput) -> tuple[str, int] | None:
        """(new text, index of its first new token), or None when there is nothing to send."""
        if key in self.done:
            return None
        chars, tokens = self.sent.get(key, (0, 0))
        if len(c.text) == chars and c.finish_reason is None:
            return None  # new tokens whose text is held back (partial character or stop string)
        self.sent[key] = (len(c.text), len(c.token_ids))
        if c.finish_reason is not None:
            self.done.add(key)
        return c.text[chars:], tokens


def stream_error(request_id: str, e: Exception) -> str:
    """The end of a stream that failed after its headers were sent: an error event, then
    `[DONE]`. An abort (the server is shutting down) is a 503, anything else a 500 (a bug)."""
    if isinstance(e, RequestAborted):
        status = 503
        logger.warning("request %s: stream ended early: %s", request_id, e)
    else:
        status = 500
        logger.error("request %s: stream failed", request_id, exc_info=e)
    return sse(error_body(status, f"{type(e).__name__}: {e}")) + SSE_DONE


def token_name(logprob, token_id: int, as_id: bool | None) -> str:
    """A logprob entry's token as the client sees it: its text, or with vLLM's
    `return_tokens_as_token_ids` "token_id:1234" (a partial character has no text of its own)."""
    return f"token_id:{token_id}" if as_id else logprob.decoded_token


def usage(outputs: list[RequestOutput]) -> UsageInfo:
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    cached = sum(o.num_cached_tokens for o in outputs)
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


def prompt_entries(output: RequestOutput, k: int | None) -> list[dict[int, Logprob] | None]:
    """The prompt's logprobs, each position cut to its `k` likeliest tokens and the prompt token's
    own (the engine may hold more: `echo` and `prompt_logprobs` can ask for different k); [] when
    none were asked."""
    if k is None or output.prompt_logprobs is None:
        return []
    return [None if entry is None else
            {t: e for t, e in entry.items() if e.rank <= k or t == token_id}
            for entry, token_id in zip(output.prompt_logprobs, output.prompt_token_ids)]


def prompt_logprobs(output: RequestOutput, k: int | None) -> PromptLogprobs | None:
    """`prompt_logprobs` as vLLM answers it (token ids as keys), or None when not asked."""
    if k is None:
        return None
    return [None if entry is None else
            {str(t): PromptLogprob(logprob=e.logprob, rank=e.rank, decoded_token=e.decoded_token)
             for t, e in entry.items()}
            for entry in prompt_entries(output, k)]


def sse(body: BaseModel) -> str:
    """One server-sent event; `model_dump_json` serialises in Rust, once per chunk."""
    return f"data: {body.model_dump_json()}\n\n"


SSE_DONE = "data: [DONE]\n\n"
