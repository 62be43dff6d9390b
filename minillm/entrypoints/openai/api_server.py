"""The OpenAI-compatible HTTP server: `minillm serve [MODEL]`, or, as KServe runs vLLM,
`python -m minillm.entrypoints.openai.api_server --model=/mnt/models --port=8080`.

    middleware ──► FastAPI app ──► OpenAIServingCompletion / OpenAIServingChat ──► AsyncEngine
    (request ids,   (routes)         (prompts, limits, responses, SSE)        (one engine thread)
     API key, body limit)

Endpoints: POST /v1/completions, POST /v1/chat/completions, POST /v1/responses (text only),
GET /v1/models, GET /v1/models/{id}, GET /health, GET and POST /ping, GET /version,
GET /metrics, POST /tokenize, POST /detokenize (POST /v1/embeddings answers a 400);
/openapi.json documents each one with every response it can send. GET /dashboard, a live view of the engine for operators (off
with --disable-dashboard), is not part of that API (see dashboard.py).

Shutdown: the first SIGTERM (or Ctrl+C) stops admitting requests (503, /health too, so a load
balancer stops sending them) and lets the in-flight ones finish, for at most --shutdown-timeout
seconds. Then what is left is aborted: a stream gets an error event and `[DONE]`, a waiting
client a 503. uvicorn closes the connections (at most SHUTDOWN_GRACE more seconds) and the
process exits 0, at most --shutdown-timeout + EXIT_BOUND seconds after the signal. A second
signal ends the wait at once, the same way.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import minillm
from minillm.engine.async_engine import AsyncEngine
from minillm.engine.llm_engine import LLMEngine
from minillm.entrypoints.openai import cluster_routes, dashboard
from minillm.entrypoints.openai.cli_args import add_server_arguments, engine_config
from minillm.entrypoints.openai.errors import (ERROR_RESPONSES, OpenAIError, error_response,
                                               install_error_handlers)
from minillm.entrypoints.openai.metrics import ServerMetrics, cache_config_info
from minillm.entrypoints.openai.middleware import (ApiKeyMiddleware, BodyLimitMiddleware,
                                                   H11HeaderTimeoutProtocol, RequestIdMiddleware)
from minillm.entrypoints.openai.protocol import (ChatCompletionRequest, ChatCompletionResponse,
                                                 CompletionRequest, CompletionResponse,
                                                 DetokenizeRequest, DetokenizeResponse,
                                                 HealthResponse, ModelCard, ModelList,
                                                 ResponseObject, ResponsesRequest,
                                                 TokenizeRequest, TokenizeResponse,
                                                 VersionResponse)
from minillm.entrypoints.openai.serving_chat import OpenAIServingChat
from minillm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from minillm.entrypoints.openai.serving_responses import OpenAIServingResponses

logger = logging.getLogger("minillm.server")

SHUTDOWN_GRACE = 2  # seconds uvicorn waits for connections to close once the drain is over
# The documented bound: after --shutdown-timeout, the grace above, then Python and PyTorch
# tearing down (a second or two; several on a busy machine), the process has exited.
EXIT_BOUND = 10


@dataclass
class ServerState:
    engine: AsyncEngine
    metrics: ServerMetrics
    completion: OpenAIServingCompletion
    chat: OpenAIServingChat
    served_model_names: list[str]
    draining: bool = False  # after SIGTERM: no new requests
    responses: OpenAIServingResponses | None = None


def state(raw: Request) -> ServerState:
    return raw.app.state.minillm


async def check_accepting(raw: Request) -> None:
    if state(raw).draining:
        raise OpenAIError(503, "the server is shutting down")


# -- routes -------------------------------------------------------------------------------------
def errors(*statuses: int) -> dict:
    return {status: ERROR_RESPONSES[status] for status in statuses}


# One server-sent event, as OpenAPI tools read a stream: its fields (`data`, the JSON text of a
# chunk, and for /v1/responses `event`, its type)
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}


def generated(model: type) -> dict:
    """A generation's 200: a JSON body, or with `"stream": true` server-sent events (chunks of
    the same shape, then `data: [DONE]`)."""
    return {200: {"model": model, "description": "The response; with `stream: true`, "
                  "server-sent events: one chunk of this shape per event, then `data: [DONE]`",
                  "content": {"text/event-stream": {"schema": SSE_EVENT}}},
            **errors(404, 429, 503)}


router = APIRouter()
v1 = APIRouter(prefix="/v1")


@v1.post("/completions", dependencies=[Depends(check_accepting)], response_model=None,
         responses=generated(CompletionResponse))
async def completions(request: CompletionRequest, raw: Request):
    return await state(raw).completion.create(request, raw)


@v1.post("/chat/completions", dependencies=[Depends(check_accepting)], response_model=None,
         responses=generated(ChatCompletionResponse))
async def chat_completions(request: ChatCompletionRequest, raw: Request):
    return await state(raw).chat.create(request, raw)


@v1.post("/responses", dependencies=[Depends(check_accepting)], response_model=None,
         responses={**generated(ResponseObject), 200: {
             "model": ResponseObject, "description": "The response; with `stream: true`, "
             "server-sent events of the Responses API (`event: response.created` ... "
             "`event: response.completed`)",
             "content": {"text/event-stream": {"schema": SSE_EVENT}}}})
async def responses(request: ResponsesRequest, raw: Request):
    """OpenAI's Responses API for text in, text out (see serving_responses.py)."""
    return await state(raw).responses.create_response(request, raw)


@v1.post("/embeddings", responses=errors(400))
async def embeddings(raw: Request) -> None:
    """vLLM serves embeddings with an embedding model only; minillm's models generate."""
    raise OpenAIError(400, "The model does not support the Embeddings API: minillm serves "
                           "generative models only", "model")


@v1.get("/models")
async def models(raw: Request) -> ModelList:
    s = state(raw)
    return ModelList(data=[model_card(s, name) for name in s.served_model_names])


@v1.get("/models/{model_id:path}", responses=errors(404))
async def model(model_id: str, raw: Request) -> ModelCard:
    """The openai client's `models.retrieve(id)`."""
    s = state(raw)
    if model_id not in s.served_model_names:
        raise OpenAIError(404, f"The model `{model_id}` does not exist.", "model")
    return model_card(s, model_id)


def model_card(s: ServerState, name: str) -> ModelCard:
    return ModelCard(id=name, root=name, max_model_len=s.chat.max_model_len)


@router.get("/health", responses=errors(503))
async def health(raw: Request) -> HealthResponse:
    """200 while the engine loop runs and requests are admitted, else 503."""
    s = state(raw)
    if s.draining:
        raise OpenAIError(503, "the server is shutting down")
    if not s.engine.is_alive:
        raise OpenAIError(503, "the engine loop is not running")
    return HealthResponse()


@router.api_route("/ping", methods=["GET", "POST"], responses=errors(503))
async def ping(raw: Request) -> HealthResponse:
    """vLLM's /ping (SageMaker's health check): the same answer as /health."""
    return await health(raw)


@router.get("/version")
async def version() -> VersionResponse:
    return VersionResponse(version=minillm.__version__)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus' text format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(raw: Request) -> Response:
    return Response(generate_latest(state(raw).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/tokenize", responses=errors(404))
async def tokenize(request: TokenizeRequest, raw: Request) -> TokenizeResponse:
    serving = state(raw).chat
    serving.model_name(request.model)
    if (request.prompt is None) == (request.messages is None):
        raise OpenAIError(400, "give either `prompt` or `messages`")
    if request.messages is not None:
        rendered = await serving.render(request.messages, request.add_generation_prompt)
        ids = rendered["prompt_token_ids"]
    else:
        ids = await serving.encode(request.prompt, request.add_special_tokens is not False)
    strs = (await asyncio.to_thread(serving.tokenizer.convert_ids_to_tokens, ids)
            if request.return_token_strs else None)
    return TokenizeResponse(count=len(ids), max_model_len=serving.max_model_len, tokens=ids,
                            token_strs=strs)


@router.post("/detokenize", responses=errors(404))
async def detokenize(request: DetokenizeRequest, raw: Request) -> DetokenizeResponse:
    serving = state(raw).chat
    serving.model_name(request.model)
    return DetokenizeResponse(prompt=await serving.decode(request.tokens))


# -- the app ------------------------------------------------------------------------------------
def openapi_schema(app: FastAPI) -> dict:
    """FastAPI's schema, plus what the middleware does: the X-Request-Id header and the errors
    it answers (400, 401 on /v1, 413 on bodies, 500); without FastAPI's 422, which this server
    answers as 400."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    request_id = {"name": "X-Request-Id", "in": "header", "required": False,
                  "description": "names the request (1 to 128 printable ASCII characters)",
                  "schema": {"type": "string"}}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            operation["responses"].pop("422", None)
            operation.setdefault("parameters", []).append(request_id)
            common = [400, 500] + [413] * (method == "post") + [401] * path.startswith("/v1")
            for status in common:
                operation["responses"].setdefault(str(status), {
                    "description": ERROR_RESPONSES[status]["description"],
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
    components = schema["components"]["schemas"]
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components.setdefault("ErrorResponse", ERROR_RESPONSES[400]["model"].model_json_schema(
        ref_template="#/components/schemas/{model}"))
    app.openapi_schema = schema
    return schema


def build_app(engine: LLMEngine, served_model_names: list[str], api_key: str | None = None,
              max_waiting_requests: int | None = None, stream_interval: int = 1,
              log_requests: bool = True, max_body_bytes: int | None = None,
              enable_dashboard: bool = True, completion_stream=None,
              enable_auto_tool_choice: bool = False, tool_call_parser: str | None = None
              ) -> FastAPI:
    """The FastAPI app around an engine; the engine thread runs while the app's lifespan does.
    `completion_stream` is lab 8's grading hook: a function with the signature of
    `serving_completion.stream_completion` (a learner's) writes streamed completions."""
    async_engine = AsyncEngine(engine)
    metrics = ServerMetrics(engine.stats, served_model_names[0], engine.max_model_len,
                            cache_config_info(engine))
    serving = (async_engine, metrics, served_model_names, max_waiting_requests, stream_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async_engine.start()
        yield
        async_engine.stop()

    app = FastAPI(title="minillm", version=minillm.__version__, lifespan=lifespan)
    completion = OpenAIServingCompletion(*serving, stream=completion_stream)
    chat = OpenAIServingChat(*serving, enable_auto_tool_choice=enable_auto_tool_choice,
                             tool_call_parser=tool_call_parser)
    app.state.minillm = ServerState(async_engine, metrics, completion, chat, served_model_names)
    app.state.minillm.responses = OpenAIServingResponses(*serving)
    app.include_router(router)
    app.include_router(cluster_routes.router)
    app.include_router(v1)
    if enable_dashboard:
        app.state.dashboard_key = api_key
        app.include_router(dashboard.router)
    install_error_handlers(app)
    app.openapi = functools.partial(openapi_schema, app)
    # The last added runs first: request ids around everything, the key before the body.
    if max_body_bytes is not None:
        app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    app.add_middleware(RequestIdMiddleware, log_requests=log_requests)
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains before uvicorn's own shutdown begins, and
    what the drain leaves at its deadline is aborted with an answer (not cut off)."""

    def __init__(self, config: uvicorn.Config, app_state: ServerState, timeout: float):
        super().__init__(config)
        self.app_state, self.timeout = app_state, timeout
        self.deadline: float | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.deadline is not None:  # a second signal: no more waiting
            self.deadline = 0.0
            return
        in_flight = len(self.app_state.engine.streams)
        logger.info("signal %d: draining %d in-flight requests (at most %.0f s); new requests "
                    "get 503", sig, in_flight, self.timeout)
        self.app_state.draining = True
        self.deadline = time.monotonic() + self.timeout

    async def on_tick(self, counter: int) -> bool:
        # uvicorn calls this every 0.1 s: hand over to its shutdown once drained or out of time.
        # Setting should_exit (not uvicorn's handle_exit) keeps the signal from being raised
        # again after the shutdown, so the process exits 0.
        if self.deadline is not None and not self.should_exit:
            engine = self.app_state.engine
            if not engine.streams or time.monotonic() > self.deadline:
                if engine.streams:
                    logger.warning("shutdown timeout: aborting %d requests", len(engine.streams))
                engine.abort_all("the server is shutting down")  # and refuse late arrivals
                self.should_exit = True
        return await super().on_tick(counter)


def log_startup(engine: LLMEngine, names: list[str]) -> None:
    blocks = engine.block_manager.num_blocks
    logger.info("minillm %s serving %s as %s: dtype %s, device %s, max_model_len %d, "
                "%d KV blocks of %d tokens (%.1f MiB of KV cache)", minillm.__version__,
                engine.model_path, ", ".join(names), str(engine.model.dtype)[6:],
                engine.device, engine.max_model_len, blocks, engine.config.block_size,
                blocks * engine.block_bytes / 2**20)


def default_model_name(args: argparse.Namespace) -> str:
    """The checkpoint folder's name, not its path: /v1/models shows the served names, and a
    path tells clients how the server's disk is laid out."""
    model = args.model_tag or args.model
    return Path(model).name if model else "minillm-tiny"


def api_key(args: argparse.Namespace) -> str | None:
    """--api-key, else MINILLM_API_KEY or VLLM_API_KEY: an environment variable does not show
    in `ps`, a command line does."""
    return args.api_key or os.environ.get("MINILLM_API_KEY") or os.environ.get("VLLM_API_KEY")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser)


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    engine = LLMEngine(engine_config(args))
    names = args.served_model_name or [default_model_name(args)]
    log_startup(engine, names)
    app = build_app(engine, names, api_key(args), args.max_waiting_requests,
                    args.stream_interval, not args.disable_log_requests,
                    args.max_request_body_bytes, not args.disable_dashboard,
                    enable_auto_tool_choice=args.enable_auto_tool_choice,
                    tool_call_parser=args.tool_call_parser)
    http = functools.partial(H11HeaderTimeoutProtocol, header_timeout=args.header_read_timeout)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level,
                            access_log=False, timeout_graceful_shutdown=SHUTDOWN_GRACE,
                            limit_concurrency=args.limit_concurrency, http=http)
    DrainingServer(config, app.state.minillm, args.shutdown_timeout).run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m minillm.entrypoints.openai.api_server")
    add_arguments(parser)
    main(parser.parse_args())
