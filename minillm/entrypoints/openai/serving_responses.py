"""`POST /v1/responses`: OpenAI's Responses API, its text part only.

The input (a string, or messages) with the `instructions` as a system message in front is
rendered by the chat template and generated like a chat completion. The answer is one output
message with one `output_text` part. Streamed, it is the Responses API's event sequence:

    response.created, response.in_progress, response.output_item.added,
    response.content_part.added, response.output_text.delta (one per piece of text),
    response.output_text.done, response.content_part.done, response.output_item.done,
    response.completed (or response.incomplete when `max_output_tokens` ended it)

each as `event: <type>` and `data: {...}`, with no `[DONE]` (OpenAI sends none here). Tools,
reasoning, stored responses and the other fields are refused with a 400 naming them.
"""
from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import StreamingResponse

from minillm.entrypoints.openai.protocol import (OutputMessage, OutputText, ResponseEvent,
                                                 ResponseObject, ResponsesRequest, ResponseUsage)
from minillm.entrypoints.openai.serving import DeltaTracker, merge, stream_error, usage
from minillm.entrypoints.openai.serving_chat import OpenAIServingChat
from minillm.outputs import RequestOutput


class OpenAIServingResponses(OpenAIServingChat):
    async def create_response(self, request: ResponsesRequest, raw: Request):
        model = self.model_name(request.model)
        prompt = await self.render(request.messages(), add_generation_prompt=True)
        params = request.sampling_params(self.max_tokens(request.max_output_tokens,
                                                         len(prompt["prompt_token_ids"])))
        request_id = self.request_id(request, raw)
        streams = await self.start(f"resp_{request_id}", [prompt], [params], 0, request.stream)
        shell = dict(id=f"resp_{request_id}", created_at=int(time.time()), model=model,
                     instructions=request.instructions, temperature=request.temperature,
                     top_p=request.top_p, max_output_tokens=request.max_output_tokens)
        if request.stream:
            return StreamingResponse(self._events(streams, shell, f"msg_{request_id}"),
                                     media_type="text/event-stream")
        await self.finish(streams, raw)
        return _response(shell, f"msg_{request_id}", streams[0].last)

    async def _events(self, streams, shell: dict, item_id: str):
        number = iter(range(1 << 62))

        def event(type_: str, **fields) -> str:
            body = ResponseEvent(type=type_, sequence_number=next(number), **fields)
            return f"event: {type_}\ndata: {body.model_dump_json()}\n\n"

        running = ResponseObject(**shell, status="in_progress", output=[])
        item = OutputMessage(id=item_id, status="in_progress", content=[])
        where = dict(item_id=item_id, output_index=0, content_index=0)
        yield event("response.created", response=running)
        yield event("response.in_progress", response=running)
        yield event("response.output_item.added", output_index=0, item=item)
        yield event("response.content_part.added", **where, part=OutputText(text=""))
        sent = DeltaTracker()
        async with self.tracked(streams):
            try:
                async for _, output in merge(streams):
                    part = sent.new_part((0, 0), output.outputs[0])
                    if part is not None and part[0]:
                        yield event("response.output_text.delta", **where, delta=part[0],
                                    logprobs=[])
            except Exception as e:  # headers are sent: report in the stream, then end it
                yield stream_error(shell["id"], e)
                return
        done = _response(shell, item_id, streams[0].last)
        text = done.output[0].content[0]
        yield event("response.output_text.done", **where, text=text.text, logprobs=[])
        yield event("response.content_part.done", **where, part=text)
        yield event("response.output_item.done", output_index=0, item=done.output[0])
        yield event(f"response.{done.status}", response=done)


def _response(shell: dict, item_id: str, output: RequestOutput) -> ResponseObject:
    """The finished response: `incomplete` when the length limit ended it."""
    c = output.outputs[0]
    status = "incomplete" if c.finish_reason == "length" else "completed"
    used = usage([output])
    return ResponseObject(
        **shell, status=status,
        incomplete_details={"reason": "max_output_tokens"} if status == "incomplete" else None,
        output=[OutputMessage(id=item_id, status=status, content=[OutputText(text=c.text)])],
        usage=ResponseUsage(input_tokens=used.prompt_tokens,
                            input_tokens_details={"cached_tokens": output.num_cached_tokens},
                            output_tokens=used.completion_tokens,
                            output_tokens_details={"reasoning_tokens": 0},
                            total_tokens=used.total_tokens))
