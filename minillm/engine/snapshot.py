"""A picture of the engine between two steps: every KV block's state and owners, the queues,
and the key figures. Chapter 8's block-map widget and the server's /dashboard both draw from it.

A device block is in one of four states:

    free    on the free list, holding nothing worth keeping
    cached  on the free list, but still holding a full block of a cached prefix: a later
            request with the same prefix takes it back instead of recomputing it (until the
            block is reused for something else, least recently freed first)
    owned   held by one sequence (ref_count 1)
    shared  held by several (ref_count > 1): a common prompt prefix, or the prompt of `n`
            parallel samples until one of them writes (copy-on-write)

Only running sequences hold device blocks: a waiting one holds none (it was never admitted, or
its blocks were freed when it was preempted by recompute) and a swapped one holds CPU blocks.
The engine is not thread-safe: take a snapshot in the thread that steps the engine.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

FREE, CACHED, OWNED, SHARED = "free", "cached", "owned", "shared"
BLOCK_STATES = (FREE, CACHED, OWNED, SHARED)


@dataclass
class BlockInfo:
    block_id: int
    state: str  # one of BLOCK_STATES
    ref_count: int
    owners: list[str] = field(default_factory=list)  # request id of each holding sequence
    hashed: bool = False  # holds a cached prefix block (a later request may reuse it)


@dataclass
class SequenceInfo:
    request_id: str
    index: int  # which of the request's n samples
    num_prompt_tokens: int
    num_tokens: int  # prompt and output so far
    num_computed_tokens: int  # whose K/V are in the cache
    num_cached_tokens: int  # of those, found in the prefix cache at admission
    num_blocks: int  # blocks held: device blocks when running, CPU blocks when swapped
    priority: int


@dataclass
class EngineSnapshot:
    blocks: list[BlockInfo]
    waiting: list[SequenceInfo]
    running: list[SequenceInfo]
    swapped: list[SequenceInfo]
    block_size: int
    num_cpu_blocks: int
    num_free_cpu_blocks: int
    prefix_cache_queries: int  # prompt tokens looked up at admission, since start-up
    prefix_cache_hits: int  # of those, found in the cache
    num_preemptions: int
    num_steps: int

    def count(self, state: str) -> int:
        return sum(b.state == state for b in self.blocks)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        """Blocks no sequence holds, cached ones included (the block manager's free list)."""
        return self.count(FREE) + self.count(CACHED)

    @property
    def num_cached(self) -> int:
        return self.count(CACHED)

    @property
    def prefix_cache_hit_rate(self) -> float:
        queries = self.prefix_cache_queries
        return self.prefix_cache_hits / queries if queries else 0.0

    def figures(self) -> dict:
        """The key figures, as the dashboard and the chapter print them."""
        return {"num_blocks": self.num_blocks, "free": self.num_free, "cached": self.num_cached,
                "owned": self.count(OWNED), "shared": self.count(SHARED),
                "prefix_cache_hit_rate": self.prefix_cache_hit_rate,
                "num_preemptions": self.num_preemptions, "num_waiting": len(self.waiting),
                "num_running": len(self.running), "num_swapped": len(self.swapped)}

    def to_dict(self) -> dict:
        """Plain JSON-ready data: the dataclass fields and `figures`."""
        return {**asdict(self), "figures": self.figures()}


def snapshot(engine) -> EngineSnapshot:
    """The state of an `LLMEngine` (`llm.engine` for an `LLM`) now, between steps."""
    manager, scheduler = engine.block_manager, engine.scheduler
    owners: dict[int, list[str]] = {}
    for seq in scheduler.running:
        for block_id in seq.block_table:
            owners.setdefault(block_id, []).append(seq.request_id)
    blocks = [_block_info(manager, block, owners.get(block.block_id, []))
              for block in manager.blocks]
    stats = scheduler.stats
    return EngineSnapshot(
        blocks=blocks, waiting=[_sequence_info(s) for s in scheduler.waiting],
        running=[_sequence_info(s) for s in scheduler.running],
        swapped=[_sequence_info(s) for s in scheduler.swapped],
        block_size=manager.block_size, num_cpu_blocks=manager.num_cpu_blocks,
        num_free_cpu_blocks=len(manager.free_cpu_blocks),
        prefix_cache_queries=stats.prefix_cache_queries,
        prefix_cache_hits=stats.prefix_cache_hits, num_preemptions=stats.num_preemptions,
        num_steps=engine.stats.num_steps)


def _block_info(manager, block, owners: list[str]) -> BlockInfo:
    hashed = block.hash is not None and manager.cached.get(block.hash) == block.block_id
    if block.block_id in manager.free_block_ids:
        state = CACHED if hashed else FREE
    else:
        state = SHARED if block.ref_count > 1 else OWNED
    return BlockInfo(block.block_id, state, block.ref_count, owners, hashed)


def _sequence_info(seq) -> SequenceInfo:
    return SequenceInfo(seq.request_id, seq.index, seq.num_prompt_tokens, seq.num_tokens,
                        seq.num_computed_tokens, seq.num_cached_tokens, len(seq.block_table),
                        seq.priority)
