"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Whatever goes wrong — a bad field, FastAPI's own validation (422 there, 400 here, as OpenAI
answers), an unknown route, an unexpected exception — the client gets this body, so the
`openai` client raises its matching exception (BadRequestError, AuthenticationError, ...).
"""
from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from minillm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger("minillm.server")

# The `type` of each status, as vLLM names them (after the openai client's exceptions).
ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
               405: "MethodNotAllowedError", 429: "RateLimitError",
               500: "InternalServerError", 503: "ServiceUnavailableError"}


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
    app.add_exception_handler(Exception, _unexpected_error)


async def _openai_error(request: Request, e: OpenAIError) -> JSONResponse:
    return error_response(e.status, e.message, e.param, e.headers)


async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    """The first problem, named by its field: `messages.0.role: Field required`."""
    first = e.errors()[0]
    where = [str(p) for p in first["loc"] if p != "body"]
    param = ".".join(where) or None
    return error_response(400, f"{param}: {first['msg']}" if param else first["msg"], param)


async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
    return error_response(e.status_code, str(e.detail), headers=e.headers)


async def _unexpected_error(request: Request, e: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "-")
    logger.exception("request %s failed", request_id)
    return error_response(500, f"internal error ({type(e).__name__}: {e}); request id "
                               f"{request_id}")
