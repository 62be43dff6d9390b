"""The OpenAI-compatible HTTP server: `minillm serve [MODEL]`, or, as KServe runs vLLM,
`python -m minillm.entrypoints.openai.api_server --model=/mnt/models --port=8080`.

    FastAPI app ──► OpenAIServingCompletion / OpenAIServingChat ──► AsyncEngine ──► LLMEngine
     (routes, auth,       (prompts, limits, responses, SSE)          (one engine thread)
      request ids)

Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
GET /version, GET /metrics, POST /tokenize, POST /detokenize.

Shutdown: the first SIGTERM (or Ctrl+C) stops admitting requests (503, /health too, so a load
balancer stops sending them) and lets the in-flight ones finish, for at most --shutdown-timeout
seconds; then uvicorn closes the connections and what is left is aborted. A second signal
stops at once.
"""
from __future__ import annotations

import argparse
import logging
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import minillm
from minillm.engine.async_engine import AsyncEngine
from minillm.engine.llm_engine import LLMEngine
from minillm.entrypoints.openai.cli_args import add_server_arguments, engine_config
from minillm.entrypoints.openai.errors import OpenAIError, install_error_handlers
from minillm.entrypoints.openai.metrics import ServerMetrics
from minillm.entrypoints.openai.protocol import (ChatCompletionRequest, CompletionRequest,
                                                 DetokenizeRequest, DetokenizeResponse, ModelCard,
                                                 ModelList, TokenizeRequest, TokenizeResponse)
from minillm.entrypoints.openai.serving_chat import OpenAIServingChat
from minillm.entrypoints.openai.serving_completion import OpenAIServingCompletion

logger = logging.getLogger("minillm.server")


@dataclass
class ServerState:
    engine: AsyncEngine
    metrics: ServerMetrics
    completion: OpenAIServingCompletion
    chat: OpenAIServingChat
    served_model_names: list[str]
    api_key: str | None
    draining: bool = False  # after SIGTERM: no new requests


def state(raw: Request) -> ServerState:
    return raw.app.state.minillm


# -- dependencies -------------------------------------------------------------------------------
async def check_api_key(raw: Request) -> None:
    key = state(raw).api_key
    given = raw.headers.get("authorization", "")
    if key and not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
        raise OpenAIError(401, "missing or wrong API key: send `Authorization: Bearer <key>`")


async def check_accepting(raw: Request) -> None:
    if state(raw).draining:
        raise OpenAIError(503, "the server is shutting down")


# -- routes -------------------------------------------------------------------------------------
router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key)])


@v1.post("/completions", dependencies=[Depends(check_accepting)])
async def completions(request: CompletionRequest, raw: Request):
    return await state(raw).completion.create(request, raw)


@v1.post("/chat/completions", dependencies=[Depends(check_accepting)])
async def chat_completions(request: ChatCompletionRequest, raw: Request):
    return await state(raw).chat.create(request, raw)


@v1.get("/models")
async def models(raw: Request) -> ModelList:
    s = state(raw)
    engine = s.engine.engine
    return ModelList(data=[ModelCard(id=name, root=engine.model_path,
                                     max_model_len=engine.max_model_len)
                           for name in s.served_model_names])


@router.get("/health")
async def health(raw: Request) -> Response:
    """200 while the engine loop runs and requests are admitted, else 503."""
    s = state(raw)
    return Response(status_code=200 if s.engine.is_alive and not s.draining else 503)


@router.get("/version")
async def version() -> dict:
    return {"version": minillm.__version__}


@router.get("/metrics")
async def metrics(raw: Request) -> Response:
    return Response(generate_latest(state(raw).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/tokenize")
async def tokenize(request: TokenizeRequest, raw: Request) -> TokenizeResponse:
    serving = state(raw).chat
    serving.model_name(request.model)
    if (request.prompt is None) == (request.messages is None):
        raise OpenAIError(400, "give either `prompt` or `messages`")
    if request.messages is not None:
        ids = serving.render(request.messages, request.add_generation_prompt)["prompt_token_ids"]
    else:
        ids = serving.encode(request.prompt, request.add_special_tokens is not False)
    strs = serving.tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=serving.max_model_len, tokens=ids,
                            token_strs=strs)


@router.post("/detokenize")
async def detokenize(request: DetokenizeRequest, raw: Request) -> DetokenizeResponse:
    serving = state(raw).chat
    serving.model_name(request.model)
    return DetokenizeResponse(prompt=serving.tokenizer.decode(request.tokens))


# -- the app ------------------------------------------------------------------------------------
class RequestIdMiddleware:
    """Every request gets an id — the client's `X-Request-Id`, or a new one — that is returned in
    the response's `X-Request-Id`, names the engine request, and starts its log line."""

    def __init__(self, app, log_requests: bool = True):
        self.app, self.log_requests = app, log_requests

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode() or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.monotonic(), []

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.log_requests and scope["path"] != "/metrics":
                logger.info("request %s: %s %s -> %s in %.3f s", request_id, scope["method"],
                            scope["path"], status[0] if status else "disconnected",
                            time.monotonic() - started)


def build_app(engine: LLMEngine, served_model_names: list[str], api_key: str | None = None,
              max_waiting_requests: int | None = None, stream_interval: int = 1,
              log_requests: bool = True) -> FastAPI:
    """The FastAPI app around an engine; the engine thread runs while the app's lifespan does."""
    async_engine = AsyncEngine(engine)
    metrics = ServerMetrics(engine.stats, served_model_names[0])
    serving = (async_engine, metrics, served_model_names, max_waiting_requests, stream_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async_engine.start()
        yield
        async_engine.stop()

    app = FastAPI(title="minillm", version=minillm.__version__, lifespan=lifespan)
    app.state.minillm = ServerState(async_engine, metrics, OpenAIServingCompletion(*serving),
                                    OpenAIServingChat(*serving), served_model_names, api_key)
    app.include_router(router)
    app.include_router(v1)
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware, log_requests=log_requests)
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains before uvicorn's own shutdown begins."""

    def __init__(self, config: uvicorn.Config, app_state: ServerState, timeout: float):
        super().__init__(config)
        self.app_state, self.timeout = app_state, timeout
        self.signal, self.deadline = None, 0.0

    def handle_exit(self, sig, frame) -> None:
        if self.signal is not None:  # a second signal: no more waiting
            return super().handle_exit(sig, frame)
        in_flight = len(self.app_state.engine.streams)
        logger.info("signal %d: draining %d in-flight requests (at most %.0f s); new requests "
                    "get 503", sig, in_flight, self.timeout)
        self.app_state.draining = True
        self.signal, self.deadline = (sig, frame), time.monotonic() + self.timeout

    async def on_tick(self, counter: int) -> bool:
        # uvicorn calls this every 0.1 s: hand over to its shutdown once drained or out of time.
        if self.signal is not None and not self.should_exit:
            in_flight = len(self.app_state.engine.streams)
            if in_flight == 0 or time.monotonic() > self.deadline:
                if in_flight:
                    logger.warning("shutdown timeout: aborting %d requests", in_flight)
                super().handle_exit(*self.signal)
        return await super().on_tick(counter)


def log_startup(engine: LLMEngine, names: list[str]) -> None:
    blocks = engine.block_manager.num_blocks
    logger.info("minillm %s serving %s as %s: dtype %s, device %s, max_model_len %d, "
                "%d KV blocks of %d tokens (%.1f MiB of KV cache)", minillm.__version__,
                engine.model_path, ", ".join(names), str(engine.model.dtype)[6:],
                engine.device, engine.max_model_len, blocks, engine.config.block_size,
                blocks * engine.block_bytes / 2**20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser)


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    engine = LLMEngine(engine_config(args))
    names = args.served_model_name or [args.model_tag or args.model or "minillm-tiny"]
    log_startup(engine, names)
    app = build_app(engine, names, args.api_key, args.max_waiting_requests,
                    args.stream_interval, not args.disable_log_requests)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level,
                            access_log=False, timeout_graceful_shutdown=5)
    try:
        DrainingServer(config, app.state.minillm, args.shutdown_timeout).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled: already shut down
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m minillm.entrypoints.openai.api_server")
    add_arguments(parser)
    main(parser.parse_args())
