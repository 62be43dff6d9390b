"""`GET /dashboard`: a live, read-only view of the engine, served by the server itself.

    browser ──GET /dashboard──► the page (static HTML, no data in it)
    page ──GET /dashboard/state every 500 ms──► snapshot(engine) on the engine thread ──► JSON

The page draws the KV block map (each block free, cached, owned by a request or shared), the
waiting/running/swapped queues and time series of the key figures, from `EngineSnapshot` (the
same snapshot chapter 8's widget draws) and the counters behind `/metrics`. The rates (tokens/s,
the mean TTFT of the requests that ended meanwhile) are differences between two polls, worked
out in the page, so the server keeps no history.

The snapshot is taken on the engine thread between two steps (`AsyncEngine.call`): the engine
is not thread-safe, and a snapshot taken mid-step could show a block both free and owned.

Security: the page itself is a static file, the data comes only from `/dashboard/state`, which
wants `Authorization: Bearer KEY` when the server has an API key. The page takes the key from
the address's fragment (`/dashboard#key=KEY`: a fragment is never sent to the server, so it is
in no access log or proxy log), or asks for it, and keeps it for the tab (sessionStorage). A
production server turns all of it off with `--disable-dashboard`.

Both routes are left out of the OpenAPI document: they are an operator's page and its private
feed (whose shape follows `EngineSnapshot` and may change), not the API clients are promised.
"""
from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import asdict, fields
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from minillm.engine.snapshot import (CACHED, FREE, OWNED, SHARED, BlockInfo, EngineSnapshot,
                                     SequenceInfo, snapshot)
from minillm.entrypoints.openai.errors import OpenAIError

PAGE = Path(__file__).resolve().parents[2] / "assets" / "dashboard.html"
SNAPSHOT_TIMEOUT_S = 10.0  # a step on a busy CPU can take a second; more means a stuck engine
STATE_LETTERS = {FREE: "f", CACHED: "c", OWNED: "o", SHARED: "s"}
QUEUES = ("waiting", "running", "swapped")
MAX_LISTED = 200  # sequences listed per queue (the figures count them all)


def check_key(raw: Request) -> None:
    expected = raw.app.state.dashboard_key
    if expected is None:
        return
    given = raw.headers.get("authorization", "").encode()
    if not secrets.compare_digest(given, f"Bearer {expected}".encode()):
        raise OpenAIError(401, "missing or wrong API key: open /dashboard#key=KEY, or send "
                               "`Authorization: Bearer <key>`")


router = APIRouter(prefix="/dashboard", include_in_schema=False)


@router.get("")
async def page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html", headers={"Cache-Control": "no-store"})


@router.get("/state", dependencies=[Depends(check_key)])
async def dashboard_state(raw: Request) -> dict:
    """The engine's snapshot, and the counters the page turns into rates."""
    s = raw.app.state.minillm
    try:
        snap = await asyncio.wait_for(s.engine.call(snapshot), SNAPSHOT_TIMEOUT_S)
    except (RuntimeError, asyncio.TimeoutError) as e:
        raise OpenAIError(503, f"the engine did not answer: {e!r}") from e
    return {"time": time.time(), "model": s.served_model_names[0], **compact(snap),
            "counters": counters(s)}


SCALARS = [f.name for f in fields(EngineSnapshot) if f.name not in ("blocks", *QUEUES)]


def compact(snap: EngineSnapshot) -> dict:
    """The snapshot in a form the page can fetch twice a second: one letter per block (`f`ree,
    `c`ached, `o`wned, `s`hared) and the holders of held blocks only (a request id once per
    sequence holding it, so a shared block's list is as long as its reference count).
    `snap.to_dict()` holds the same, but a CPU server's 16,384 blocks make that 1.4 MB of JSON
    and a second to build."""
    return {"blocks": "".join(STATE_LETTERS[b.state] for b in snap.blocks),
            "owners": {b.block_id: b.owners for b in snap.blocks if b.owners},
            "queues": {name: [asdict(q) for q in getattr(snap, name)[:MAX_LISTED]]
                       for name in QUEUES},
            "figures": snap.figures(), **scalars(snap)}


def scalars(snap: EngineSnapshot) -> dict:
    return {name: getattr(snap, name) for name in SCALARS}


def expand(state: dict) -> EngineSnapshot:
    """`/dashboard/state`'s JSON back as an `EngineSnapshot`, e.g. for chapter 8's
    `plot_block_map` in a notebook. Not carried over: queues past MAX_LISTED, and whether a
    held block also holds a cached prefix (`hashed` is set for cached-free blocks only)."""
    names = {letter: name for name, letter in STATE_LETTERS.items()}
    holders = {int(block): owners for block, owners in state["owners"].items()}
    blocks = [BlockInfo(i, names[letter], len(holders.get(i, [])), holders.get(i, []),
                        letter == "c") for i, letter in enumerate(state["blocks"])]
    queues = {name: [SequenceInfo(**q) for q in state["queues"][name]] for name in QUEUES}
    return EngineSnapshot(blocks=blocks, **queues, **{name: state[name] for name in SCALARS})


def counters(s) -> dict:
    """Cumulative figures since start-up, read where /metrics reads them."""
    stats, registry = s.engine.engine.stats, s.metrics.registry
    labels = {"model_name": s.metrics.model_name}
    ttft_sum = registry.get_sample_value("vllm:time_to_first_token_seconds_sum", labels)
    ttft_count = registry.get_sample_value("vllm:time_to_first_token_seconds_count", labels)
    return {"prompt_tokens": stats.prompt_tokens, "generation_tokens": stats.generation_tokens,
            "ttft_seconds_sum": ttft_sum or 0.0, "ttft_count": ttft_count or 0.0,
            "kv_cache_usage": stats.kv_cache_usage, "num_requests_in_server": len(s.engine.streams)}
