"""What happens to a request before a route sees it, as plain ASGI middleware:

    RequestIdMiddleware  ─► ApiKeyMiddleware ─► BodyLimitMiddleware ─► FastAPI
    (id, access log,         (401 before the      (413 before the body
     500 for a bug)           body is read)         is parsed)

Plain ASGI, not FastAPI dependencies: a dependency runs after FastAPI has read and parsed the
whole body, so an unauthenticated client could make the server read and parse 100 MB.
`H11HeaderTimeoutProtocol` goes one step earlier, into uvicorn's HTTP parser.
"""
from __future__ import annotations

import logging
import re
import secrets
import time
import uuid

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from minillm.entrypoints.openai.errors import error_response

logger = logging.getLogger("minillm.server")

REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")  # printable ASCII: safe in headers and logs
CLOSE = {"Connection": "close"}  # answered before the body was read: the connection is spent


class RequestIdMiddleware:
    """Every request gets an id — the client's `X-Request-Id`, or a new one — that is returned in
    the response's `X-Request-Id`, names the engine request, and starts its access-log line.

    It is the outermost layer, so every response passes through it: a bug anywhere inside
    becomes a logged 500 that carries the id, and a client that hangs up is logged as
    `disconnected` (quietly: that is the client's business, not the server's error).
    """

    def __init__(self, app, log_requests: bool = True):
        self.app, self.log_requests = app, log_requests

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        request_id = given.decode() if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.monotonic(), []
        done = disconnected = False

        async def receive_watching():
            nonlocal disconnected
            message = await receive()
            disconnected |= message["type"] == "http.disconnect" and not done
            return message

        async def send_with_id(message):
            nonlocal done
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done = True
            await send(message)

        try:
            if given and not REQUEST_ID.fullmatch(given):
                await error_response(400, "X-Request-Id must be 1 to 128 printable ASCII "
                                          "characters", "X-Request-Id")(scope, receive,
                                                                         send_with_id)
            else:
                await self.app(scope, receive_watching, send_with_id)
        except Exception:
            logger.exception("request %s failed", request_id)
            if not status:  # nothing sent yet: the client still gets an answer
                await error_response(500, f"internal error; request id {request_id}")(
                    scope, receive, send_with_id)
        finally:
            if self.log_requests and scope["path"] != "/metrics":
                outcome = "disconnected" if disconnected or not status else status[0]
                logger.info("request %s: %s %s -> %s in %.3f s", request_id, scope["method"],
                            scope["path"], outcome, time.monotonic() - started)


class ApiKeyMiddleware:
    """`Authorization: Bearer <key>` on /v1/* (vLLM protects only those), checked on the
    headers alone: a refused request's body is never read."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                response = error_response(401, "missing or wrong API key: send "
                                               "`Authorization: Bearer <key>`", headers=CLOSE)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: at once from `Content-Length`, else (chunked uploads)
    as soon as the bytes read pass the limit. The body is read here, then handed on whole."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")  # h11 checked it is a number
        if length is not None and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body: nothing to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body"):
                break
        body, handed = b"".join(chunks), False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()  # after the body only the disconnect comes
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(413, f"the request body is larger than {self.max_bytes} "
                                       f"bytes (--max-request-body-bytes)", headers=CLOSE)
        await response(scope, receive, send)


class H11HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers: a client that opens
    connections and trickles their headers in (slowloris) has them closed, instead of holding
    them open for ever. uvicorn's own keep-alive timeout only covers the idle time between
    requests, and only until the first byte of the next one."""

    def __init__(self, *args, header_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.header_deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_headers()  # the next request on this keep-alive connection

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE and self.header_deadline is not None:
            self.header_deadline.cancel()  # the headers are in
            self.header_deadline = None

    def connection_lost(self, exc) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
        self.header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
