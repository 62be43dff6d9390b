"""Lab 8: a streaming endpoint. Fill in the stub, then run `make grade LAB=lab08`.

`POST /v1/completions` with `"stream": true` answers with server-sent events (SSE): the response
headers go out at once, then one event per piece of new text, as the engine produces it:

    data: {"id": "cmpl-42", "object": "text_completion", "created": 1733, "model": "tiny",
           "choices": [{"index": 0, "text": " upon", "logprobs": null, "finish_reason": null}]}

    data: {... "choices": [{"index": 0, "text": " a time", "finish_reason": "length"}]}

    data: {... "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3, ...}}

    data: [DONE]

The server has done everything before your function runs: checked the request, tokenized its
prompts and added one engine request per prompt to the `AsyncEngine` (one engine thread; your
code runs on the event loop and never touches the engine directly). You get one
`RequestStream` per prompt: `async for output in stream` yields the newest *cumulative*
`RequestOutput` of that prompt each time it progresses (`output.outputs` holds its `n` samples,
each a `CompletionOutput` with the text so far and its `finish_reason` once it ended), the
finished one last. `merge(streams)` (given) reads all of them at once as `(prompt index,
output)` pairs.

Your function is an async generator: the server sends each string it yields as it comes. The
server mounts it with `build_app(..., completion_stream=stream_completion)`, the hook the tests
use (see minillm/entrypoints/openai/api_server.py).
"""
from __future__ import annotations

import time  # noqa: F401
from typing import AsyncIterator

from minillm.engine.async_engine import RequestStream
from minillm.entrypoints.openai.protocol import CompletionRequest, CompletionResponse  # noqa: F401
# Given: reading several streams at once, how much of each sample was sent, an event's text,
# the end marker, the error event, usage figures from outputs, and a choice carrying new text
# (it also handles echo and logprobs, which the tests here do not ask for).
from minillm.entrypoints.openai.serving import (SSE_DONE, DeltaTracker, merge, sse,  # noqa: F401
                                                stream_error, usage)
from minillm.entrypoints.openai.serving_completion import OpenAIServingCompletion, _choice  # noqa: F401


async def stream_completion(serving: OpenAIServingCompletion, request: CompletionRequest,
                            streams: list[RequestStream], request_id: str,
                            model: str) -> AsyncIterator[str]:
    """The body of a streamed completion: SSE strings, yielded as the engine produces text.

    Task 8.1 (chunks and [DONE]): for each new output of `merge(streams)`, and each sample `c`
    in `output.outputs`, yield `sse(CompletionResponse(id=request_id, created=created,
    model=model, choices=[choice]))` carrying only the text that is *new* since that sample's
    last chunk (a delta: the client appends it), with the sample's `finish_reason` (None until
    it ends). `created` is one `int(time.time())` for the whole stream. A sample whose text did
    not grow (a partial character or a possible stop string is held back) and has not finished
    gets no chunk. End the stream with `SSE_DONE` (`data: [DONE]`). Hint: `DeltaTracker` keeps,
    per (prompt index, sample index), how much was sent; `sent.new_part(key, c)` returns (new
    text, index of its first token) or None, and `_choice(request, output, c, index, *part,
    serving.tokenizer.decode)` builds the choice.

    Task 8.2 (n samples, several prompts, usage): `prompt` may be a batch and each prompt has
    `request.n` samples; sample `c` of prompt `i` is choice `i * request.n + c.index`. With
    `stream_options: {"include_usage": true}` (`request.include_usage`), send one more chunk
    just before `[DONE]`: `choices=[]` and `usage=usage(outputs)` over the last output of
    *every* prompt (`stream.last`). Without it, no usage chunk.

    Task 8.3 (disconnects and errors): a client that hangs up must not keep its KV blocks.
    Starlette then stops your generator (it raises `GeneratorExit` at the `yield`): on the way
    out, every stream that has not finished must be aborted (`serving.engine.abort(
    stream.request_id)`), or the engine keeps generating for no one. `async with
    serving.tracked(streams):` around the reading does that (and records the finished
    requests' metrics). If reading raises (the server is shutting down), the headers are
    already sent: yield `stream_error(request_id, e)` (an error event and `[DONE]`) and stop.
    """
    raise NotImplementedError("Task 8.1: stream the completion as server-sent events")
    yield  # (a `yield` anywhere makes this an async generator, as the server expects)
