"""The paged KV-cache allocator: the heart of PagedAttention.

The cache is cut into fixed-size blocks. A sequence owns a *block table* (logical block i →
physical block id) and grows one block at a time, so at most one partly filled block per
sequence is ever wasted. On top of that:

* reference counts let sequences share blocks: a prompt prefix (prefix caching) or the prompt of
  `n` parallel samples (copy-on-write before a shared block is written);
* prefix caching keys each full block by a hash chained over its parent's key and its tokens;
  freed blocks keep their contents and key until they are reused, least recently freed first;
* swapping moves a preempted sequence's blocks to a CPU pool and back;
* with KV-cache events on (`kv_events`), the prefix cache's changes are recorded for a router:
  blocks keyed, blocks evicted, the cache reset (published by kv_events.py after each step).

Copies and swaps are only *recorded* here (`BlockMoves`, pairs of block ids); the scheduler hands
them to the model runner in its `SchedulerOutput`, which moves the data before the forward pass.
A CPU block that is swapped in returns to the CPU free list only after that copy has run
(`release_cpu_blocks`): until then a swap-out could overwrite data not yet read back.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

from minillm.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVCacheEvent
from minillm.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None  # prefix-cache key, once the block is full and computed
    token_ids: list[int] = field(default_factory=list)  # to verify a hash hit


@dataclass
class BlockMoves:
    """Data the runner must move before a forward pass, in this order (reads before writes)."""

    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (device block, cpu block)
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # (cpu block, device block)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst)

    def __bool__(self) -> bool:
        return bool(self.swap_out or self.swap_in or self.copies)


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def chain_hash(parent: bytes | None, tokens: list[int]) -> bytes:
    """A block's key: SHA-256 of its parent's key and its tokens, so it depends on every token
    before it. A cryptographic hash, so that no prompt can be crafted to collide with another's
    key and be served its KV cache (Python's `hash()` allowed that: vLLM's CVE-2025-25183)."""
    return hashlib.sha256((parent or b"") + array("q", tokens).tobytes()).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True,
                 num_cpu_blocks: int = 0):
        self.block_size, self.enable_prefix_caching = block_size, enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # LRU first
        self.cached: dict[bytes, int] = {}  # hash -> block id
        self.num_cpu_blocks = num_cpu_blocks
        self.free_cpu_blocks = list(range(num_cpu_blocks))
        self.moves = BlockMoves()  # recorded since the scheduler last took them
        self.kv_events: list[KVCacheEvent] | None = None  # a list: recorded since last taken

    # -- counting ------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds (some may still hold reusable cached prefixes)."""
        return len(self.free_block_ids)

    @property
    def usage(self) -> float:
        return 1 - self.num_free_blocks / self.num_blocks

    # -- allocation ----------------------------------------------------------------------------
    def _take_free_block(self) -> int:
        block_id, _ = self.free_block_ids.popitem(last=False)  # the least recently freed
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]  # evict its cached prefix
            self._record(BlockRemoved([block.hash]))
        block.hash, block.token_ids, block.ref_count = None, [], 1
        return block_id

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free_block_ids[block_id] = None

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        needed = blocks_for(seq.num_computed_tokens + num_new_tokens, self.block_size)
        return needed - len(seq.block_table) + self._needs_copy(seq) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow `seq.block_table` to hold `num_computed_tokens + num_new_tokens` tokens.

        Returns False, changing nothing, when there are not enough free blocks.
        """
        if not self.can_allocate(seq, num_new_tokens):
            return False
        if self._needs_copy(seq):
            self._copy_on_write(seq)
        needed = blocks_for(seq.num_computed_tokens + num_new_tokens, self.block_size)
        while len(seq.block_table) < needed:
            seq.block_table.append(self._take_free_block())
        return True

    def free(self, seq: Sequence) -> None:
        """Give back a sequence's blocks. Tail blocks first, so shared prefixes are evicted last."""
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []

    # -- copy-on-write -------------------------------------------------------------------------
    def fork(self, parent: Sequence, child: Sequence) -> None:
        """`child` shares all of `parent`'s blocks (parallel samples of one prompt)."""
        for block_id in parent.block_table:
            self.blocks[block_id].ref_count += 1
        child.block_table = list(parent.block_table)
        child.block_hashes = list(parent.block_hashes)
        child.num_computed_tokens = parent.num_computed_tokens

    def _needs_copy(self, seq: Sequence) -> bool:
        """The next token goes into a partly filled block that another sequence also holds."""
        partial = seq.num_computed_tokens % self.block_size != 0
        last = seq.num_computed_tokens // self.block_size
        return (partial and last < len(seq.block_table)
                and self.blocks[seq.block_table[last]].ref_count > 1)

    def _copy_on_write(self, seq: Sequence) -> None:
        last = seq.num_computed_tokens // self.block_size
        shared = seq.block_table[last]
        seq.block_table[last] = self._take_free_block()
        self._release(shared)
        self.moves.copies.append((shared, seq.block_table[last]))

    # -- prefix caching ------------------------------------------------------------------------
    def reuse_cached_prefix(self, seq: Sequence) -> None:
        """Before a sequence's first allocation: adopt the cached blocks of its longest cached
        prefix. At least one token is always left to compute, to get the next token's logits."""
        if not self.enable_prefix_caching or seq.block_table:
            return
        parent = None
        for i in range((seq.num_tokens - 1) // self.block_size):
            tokens = seq.block_tokens(i)
            key = chain_hash(parent, tokens)
            block_id = self.cached.get(key)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            self._adopt(block_id)
            seq.block_table.append(block_id)
            seq.block_hashes.append(key)
            parent = key
        seq.num_computed_tokens = seq.num_cached_tokens = len(seq.block_table) * self.block_size

    def _adopt(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_block_ids[block_id]
        block.ref_count += 1

    def cache_full_blocks(self, seq: Sequence) -> None:
        """After a step: key the sequence's newly completed blocks so later requests find them."""
        if not self.enable_prefix_caching:
            return
        for i in range(len(seq.block_hashes), seq.num_computed_tokens // self.block_size):
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            tokens = seq.block_tokens(i)
            key = chain_hash(parent, tokens)
            seq.block_hashes.append(key)
            block = self.blocks[seq.block_table[i]]
            if key not in self.cached and block.hash is None:
                block.hash, block.token_ids = key, tokens
                self.cached[key] = block.block_id
                self._record_stored(parent, key, tokens)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (new weights make them wrong). As vLLM, only when no
        sequence holds a block; returns whether it did."""
        if self.num_free_blocks < self.num_blocks:
            return False
        for block in self.blocks:
            block.hash, block.token_ids = None, []
        self.cached.clear()
        self._record(AllBlocksCleared())
        return True

    # -- KV-cache events -----------------------------------------------------------------------
    def _record(self, event: KVCacheEvent) -> None:
        if self.kv_events is not None:
            self.kv_events.append(event)

    def _record_stored(self, parent: bytes | None, key: bytes, tokens: list[int]) -> None:
        """A block keyed: it extends the last BlockStored when it is that run's next block (one
        event per run of a prompt's blocks, as vLLM sends them)."""
        last = self.kv_events[-1] if self.kv_events else None
        if isinstance(last, BlockStored) and last.block_hashes[-1] == parent:
            last.block_hashes.append(key)
            last.token_ids += tokens
        else:
            self._record(BlockStored([key], parent, list(tokens), self.block_size))

    def take_kv_events(self) -> list[KVCacheEvent]:
        """The events recorded since the last call (the engine publishes them after a step)."""
        if self.kv_events is None:  # events off
            return []
        events, self.kv_events = self.kv_events, []
        return events

    # -- swapping ------------------------------------------------------------------------------
    def can_swap_out(self, seq: Sequence) -> bool:
        return len(seq.block_table) <= len(self.free_cpu_blocks)

    def swap_out(self, seq: Sequence) -> None:
        """Move the sequence's blocks to the CPU pool; its block table then names CPU blocks."""
        cpu_table = [self.free_cpu_blocks.pop() for _ in seq.block_table]
        self.moves.swap_out += zip(seq.block_table, cpu_table)
        self.free(seq)
        seq.block_table = cpu_table

    def can_swap_in(self, seq: Sequence) -> bool:
        return len(seq.block_table) <= self.num_free_blocks

    def swap_in(self, seq: Sequence) -> None:
        """Bring the blocks back; the CPU blocks stay taken until `release_cpu_blocks`."""
        device_table = [self._take_free_block() for _ in seq.block_table]
        self.moves.swap_in += zip(seq.block_table, device_table)
        seq.block_table = device_table

    def release_cpu_blocks(self, swap_in: list[tuple[int, int]]) -> None:
        """After the runner copied swapped-in blocks back: their CPU blocks are free again."""
        self.free_cpu_blocks += [cpu for cpu, _ in swap_in]

    def free_swapped(self, seq: Sequence) -> None:
        """Give back a swapped-out sequence's CPU blocks (it was aborted while swapped)."""
        self.free_cpu_blocks += seq.block_table
        seq.block_table = []

    def take_moves(self) -> BlockMoves:
        """The data moves recorded since the last call (the scheduler puts them in its output)."""
        moves, self.moves = self.moves, BlockMoves()
        return moves
