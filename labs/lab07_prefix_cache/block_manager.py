"""Lab 7: prefix caching and copy-on-write. Fill in the stubs, then run `make grade LAB=lab07`.

Lab 3 built the paged allocator: block tables, reference counts, a free list. Here blocks get
*shared*, in two ways (chapter 8):

* **Prefix caching.** Every full block gets a key: a hash of its parent block's key and its own
  tokens, so a key names a block's tokens *and every token before them* (the K/V of a token
  depend on all the tokens before it). When a new request's prompt starts with blocks whose keys
  are in the cache, it adopts those blocks instead of computing them again. A block whose last
  holder finishes keeps its contents and key on the free list; it is reused for other tokens
  only when it is the least recently freed block, and only then is its key forgotten.
* **Copy-on-write.** The `n` parallel samples of one prompt share the prompt's blocks. A full
  block is never written again, so sharing it is safe; the last, partly filled block is written
  by each sample's next token, so the first sample to write gets its own copy of it.

The class below *inherits* what you already have from minillm's reference
(`minillm/engine/block_manager.py`): the constructor, `num_free_blocks`, `can_allocate`,
`allocate`, `free` (with `_release`: a block whose `ref_count` falls to 0 goes to the back of
`free_block_ids` *keeping its key*), `_needs_copy`, swapping and `take_moves`. You write the
methods that make the sharing: your versions replace the reference's, and the inherited
`allocate` and `free` call them.

The data you work with (`bm` a BlockManager, `seq` a minillm `Sequence`):
    bm.blocks[i]          a `Block`: block_id, ref_count, hash (its key, or None), token_ids
    bm.free_block_ids     an OrderedDict used as an ordered set: least recently freed first
    bm.cached             dict key -> block id: the blocks a new prompt may adopt
    bm.moves.copies       list of (source block, destination block) for the model runner
    seq.token_ids, seq.num_tokens, seq.block_table, seq.num_computed_tokens,
    seq.block_hashes      the keys of the sequence's full blocks hashed so far, in order
    seq.block_tokens(i)   the tokens of the sequence's logical block i
"""
from __future__ import annotations

import hashlib
from array import array

from minillm.engine import block_manager as reference
from minillm.engine.sequence import Sequence


def chain_hash(parent: bytes | None, tokens: list[int]) -> bytes:
    """A block's key: the SHA-256 digest (32 bytes) of the parent block's key followed by the
    block's tokens, each as an 8-byte signed integer in the machine's byte order (the bytes of
    `array("q", tokens)`). The first block of a sequence has no parent (`None`): hash its tokens
    alone.

    Why a cryptographic hash and not Python's `hash()`: a client could craft a prompt whose key
    collides with another user's and be served their cached K/V (vLLM's CVE-2025-25183).
    """
    raise NotImplementedError("Task 7.1: the key of a block, chained over its parent's key")


class BlockManager(reference.BlockManager):
    """The paged allocator with prefix caching and copy-on-write. Yours: `cache_full_blocks`
    (task 7.1), `_take_free_block`, `reuse_cached_prefix`, `_adopt` (task 7.2), `fork` and
    `_copy_on_write` (task 7.3)."""

    # -- 7.1 the hash chain --------------------------------------------------------------------
    def cache_full_blocks(self, seq: Sequence) -> None:
        """After a step computed some of `seq`'s tokens: key its newly completed blocks.

        The blocks `0 .. len(seq.block_hashes) - 1` are keyed already; every further block whose
        tokens are all computed (`seq.num_computed_tokens`) is keyed now, in order: its key is
        `chain_hash(key of the block before it, or None for block 0, its tokens)`, appended to
        `seq.block_hashes`. A partly filled block is not keyed (its tokens are not final).

        Then the physical block becomes findable: set its `hash` and `token_ids` (kept to check
        a hit) and `self.cached[key] = block_id`, unless that key is already cached (another
        sequence computed the same tokens first: keep that one) or the block already has a key.
        Do nothing when `self.enable_prefix_caching` is False.
        """
        raise NotImplementedError("Task 7.1: key the newly full blocks of seq")

    # -- 7.2 reuse, and the LRU of freed cached blocks -----------------------------------------
    def _take_free_block(self) -> int:
        """Take the least recently freed block off the free list (the front of
        `self.free_block_ids`) for new tokens, and return its id.

        If it still holds a cached prefix (its `hash` is in `self.cached` and points at this
        block), that prefix is evicted now: delete the key from `self.cached`. Then the block
        is blank and has one holder: `hash` None, `token_ids` [], `ref_count` 1.

        Hint: `OrderedDict.popitem(last=False)` pops the first (oldest) item.
        """
        raise NotImplementedError("Task 7.2: take the least recently freed block, evicting it")

    def reuse_cached_prefix(self, seq: Sequence) -> None:
        """When `seq` is admitted, before its first allocation: adopt the cached blocks of the
        longest prefix of its prompt found in the cache.

        Walk its full blocks from block 0, computing each key as `cache_full_blocks` does; stop
        at the first key not in `self.cached`, or whose block's `token_ids` differ from the
        tokens (a hit must hold the same tokens). For each hit: `_adopt` the block, append it to
        `seq.block_table` and its key to `seq.block_hashes`. At the end set
        `seq.num_computed_tokens` and `seq.num_cached_tokens` to the tokens those blocks hold.

        Leave at least one token to compute: the engine needs the logits of the prompt's last
        token to sample, so only full blocks before the last token count (a 32-token prompt in
        blocks of 16 can reuse one block, not two). Do nothing when prefix caching is off or
        `seq` already has blocks.
        """
        raise NotImplementedError("Task 7.2: adopt the cached blocks of seq's prompt")

    def _adopt(self, block_id: int) -> None:
        """`seq` takes one more reference to a cached block. A block nobody held was on the free
        list (cached, free): take it off, so it can no longer be handed out for other tokens."""
        raise NotImplementedError("Task 7.2: hold a cached block")

    # -- 7.3 copy-on-write ---------------------------------------------------------------------
    def fork(self, parent: Sequence, child: Sequence) -> None:
        """`child` (another sample of `parent`'s prompt) shares all of `parent`'s blocks: its
        own copy of the block table (a new list: the two tables change apart from now on) and
        of `block_hashes`, the same `num_computed_tokens`, and one more reference on each
        block."""
        raise NotImplementedError("Task 7.3: share parent's blocks with child")

    def _copy_on_write(self, seq: Sequence) -> None:
        """`seq`'s next token goes into a partly filled block that another sequence also holds
        (the inherited `allocate` calls this when `_needs_copy(seq)`, after checking that a
        free block is available).

        Give `seq` a fresh block in that place of its block table, drop its reference to the
        shared one, and record the copy the model runner must do before the forward pass,
        `(shared block, new block)`, in `self.moves.copies`. The other holders keep the shared
        block, untouched.
        """
        raise NotImplementedError("Task 7.3: copy the shared block before writing to it")
