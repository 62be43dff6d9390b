"""What a router or a gateway asks a worker, beyond the OpenAI API: its load and its shape.

vllm-router (and SGLang's router, which it grew from) call these on every worker:

    GET /get_load          {"load": N}               power_of_two picks the less loaded of two
    GET /load              {"server_load": N}        vLLM's name for the same number
    GET /get_server_info   engine settings           kv_aware reads the KV block size here
    GET /get_model_info    {"model_path": ...}       the router proxies it to clients
    POST /v1/completions/render  [{"token_ids": ...}]  kv_aware matches the prompt's tokens to
                                                      the replicas' KV-cache events

N counts the requests in the server: running, waiting, or still streaming their last tokens.
/health, /v1/models and /metrics (vLLM's `vllm:` names) are in api_server.py.
"""
from __future__ import annotations

from fastapi import APIRouter, Request

import minillm
from minillm.entrypoints.openai.errors import ERROR_RESPONSES
from minillm.entrypoints.openai.protocol import CompletionRequest
from minillm.entrypoints.openai.serving_completion import _split

router = APIRouter()


def _in_flight(raw: Request) -> int:
    return len(raw.app.state.minillm.engine.streams)


@router.get("/get_load")
async def get_load(raw: Request) -> dict:
    return {"load": _in_flight(raw)}


@router.get("/load")
async def load(raw: Request) -> dict:
    return {"server_load": _in_flight(raw)}


@router.get("/get_server_info")
async def get_server_info(raw: Request) -> dict:
    state = raw.app.state.minillm
    engine = state.engine.engine
    config = engine.config
    return {"version": minillm.__version__, "model_path": state.served_model_names[0],
            "served_model_name": state.served_model_names[0],
            "max_model_len": engine.max_model_len, "block_size": config.block_size,
            "num_gpu_blocks": engine.block_manager.num_blocks,
            "enable_prefix_caching": config.enable_prefix_caching}


@router.get("/get_model_info")
async def get_model_info(raw: Request) -> dict:
    # the served name, not the checkpoint's folder: the router hands this to any client, and an
    # absolute path tells strangers how the machine is laid out (as /v1/models keeps it out)
    name = raw.app.state.minillm.served_model_names[0]
    return {"model_path": name, "tokenizer_path": name, "is_generation": True}


@router.post("/v1/completions/render", responses={404: ERROR_RESPONSES[404]})
async def render_completion(request: CompletionRequest, raw: Request) -> list[dict]:
    """vLLM's renderer API: each prompt's token ids as the engine will see them (one vLLM
    `GenerateRequest` per prompt). vllm-router's kv_aware policy asks for them before it routes
    a request, and matches them block by block against the blocks each replica's KV-cache
    events announced (minillm/engine/kv_events.py)."""
    serving = raw.app.state.minillm.completion
    model = serving.model_name(request.model)
    prompts = [await serving.truncated(await serving._prompt(p, request),  # as create() does
                                       request.truncate_prompt_tokens)
               for p in _split(request.prompt)]
    return [{"request_id": f"cmpl-{raw.state.request_id}-{i}", "model": model,
             "token_ids": p["prompt_token_ids"],
             "sampling_params": {"max_tokens": request.max_tokens}}
            for i, p in enumerate(prompts)]
