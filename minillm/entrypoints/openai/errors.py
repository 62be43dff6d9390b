"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Whatever goes wrong — a bad field, FastAPI's own validation (422 there, 400 here, as OpenAI
answers), an unknown route, an unexpected exception (middleware.RequestIdMiddleware turns those
into 500s) — the client gets this body, so the `openai` client raises its matching exception
(BadRequestError, AuthenticationError, ...). `ERROR_RESPONSES` documents each in the OpenAPI
schema.
"""
from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from minillm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse

# The `type` of each status, as vLLM names them (after the openai client's exceptions).
ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
               405: "MethodNotAllowedError", 413: "RequestTooLargeError", 429: "RateLimitError",
               500: "InternalServerError", 503: "ServiceUnavailableError"}

# Each status the server sends, and when: the OpenAPI schema's `responses` entries.
ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": when} for status, when in {
    400: "A malformed body, a field out of range, a prompt beyond the context length, a bad "
         "X-Request-Id header",
    401: "`--api-key` is set and `Authorization: Bearer <key>` is missing or wrong",
    404: "A model the server does not serve",
    413: "The body is larger than `--max-request-body-bytes`",
    429: "Too many sequences already wait for their first token (`--max-waiting-requests`)",
    500: "A bug (logged with a traceback and the request id)",
    503: "The server is draining after SIGTERM, or its engine loop died",
}.items()}


class OpenAIError(Exception):
    """Raise it anywhere in a handler: it becomes an error response with this status."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


def error_body(status: int, message: str, param: str | None = None) -> ErrorResponse:
    error_type = ERROR_TYPES.get(status, HTTPStatus(status).phrase.replace(" ", ""))
    return ErrorResponse(error=ErrorInfo(message=message, type=error_type, param=param,
                                         code=status))


def error_response(status: int, message: str, param: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param).model_dump(), status_code=status,
                        headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)


async def _openai_error(request: Request, e: OpenAIError) -> JSONResponse:
    return error_response(e.status, e.message, e.param, e.headers)


async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    """The first problem, named by its field: `messages.0.role: Field required`."""
    first = e.errors()[0]
    param = field_path(first["loc"]) or first.get("ctx", {}).get("param")
    message = first["msg"] if first["msg"].startswith(f"{param}:") else f"{param}: {first['msg']}"
    return error_response(400, message if param else first["msg"], param)


def field_path(loc: tuple) -> str | None:
    """`messages.0.content` from pydantic's location, without `body` and the type tags of
    union members (`str`, `list[int]`, ...), which are no field names."""
    names = [str(p) for p in loc if p != "body" and not (
        isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool", "list")))]
    return ".".join(names) or None


async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
    return error_response(e.status_code, str(e.detail), headers=e.headers)

