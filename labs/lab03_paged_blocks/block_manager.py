"""Lab 3: the paged KV-cache allocator. Fill in the stubs, then run `make grade LAB=lab03`.

The KV cache is cut into `num_blocks` blocks of `block_size` token slots. A sequence owns a
*block table*, `seq.block_table`: logical block i (its tokens i*block_size .. (i+1)*block_size-1)
lives in physical block `seq.block_table[i]`. So token t sits in slot

    seq.block_table[t // block_size] * block_size + t % block_size

and a sequence never needs contiguous memory: any free block will do, and at most its last block
is partly empty. The reference is `minillm/engine/block_manager.py` (it also does prefix caching,
copy-on-write and swapping, which later labs add; here `enable_prefix_caching` and
`num_cpu_blocks` are accepted and ignored).

`Sequence` is minillm's (`minillm/engine/sequence.py`); what you need of it:
`seq.block_table` (list of block ids), `seq.num_computed_tokens` (tokens whose K/V are already
in the cache).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from minillm.engine.sequence import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    """How many blocks hold `num_tokens` tokens: the ceiling of num_tokens / block_size.

    Examples (block_size 16): 0 -> 0, 1 -> 1, 16 -> 1, 17 -> 2.
    """
    raise NotImplementedError("Task 3.1: blocks needed for num_tokens tokens")


@dataclass
class Block:
    block_id: int
    ref_count: int = 0  # how many sequences hold this block (more than one once blocks are shared)


class BlockManager:
    """Hands out KV blocks to sequences and takes them back.

    Given: the constructor, the counters and `fork`. Yours: `can_allocate` and `allocate`
    (tasks 3.2, 3.3) and `free` (task 3.4).
    """

    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True,
                 num_cpu_blocks: int = 0):
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_block_ids: deque[int] = deque(range(num_blocks))  # take from the left

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    @property
    def usage(self) -> float:
        return 1 - self.num_free_blocks / self.num_blocks

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether enough blocks are free to grow `seq` to `num_computed_tokens + num_new_tokens`
        tokens.

        Hint: count the blocks the sequence will need in total (`blocks_for`), subtract the ones
        its block table already has. `num_new_tokens` may be less than the rest of the prompt (a
        chunk of it: chunked prefill) or 1 (a decode step).
        """
        raise NotImplementedError("Task 3.2: can the sequence grow?")

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow `seq.block_table` to hold `num_computed_tokens + num_new_tokens` tokens.

        Returns False, changing nothing, when there are not enough free blocks. Each block taken
        comes off the free list with `ref_count` 1 and is appended to the block table.

        Task 3.2 is the prompt (a fresh sequence gets all the blocks its prompt needs); task 3.3
        is decoding (one token at a time: a new block only when the last one is full).
        """
        raise NotImplementedError("Task 3.2/3.3: grow the block table")

    def free(self, seq: Sequence) -> None:
        """Give back a sequence's blocks and empty its block table.

        Drop one reference from each block; a block nobody holds any more goes back at the END of
        the free list (blocks are taken from the front, so the least recently freed block is
        reused first). Go through the table from the last block to the first, so a sequence's
        first blocks are reused last (later chapters keep a freed prompt's blocks for prefix
        caching). A block that another sequence still holds (after `fork`) stays where it is.
        """
        raise NotImplementedError("Task 3.4: free a sequence's blocks")

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Given: `child` shares all of `parent`'s blocks (chapter 8: parallel samples of one
        prompt). Each shared block gains a reference; it goes back on the free list only once
        both sequences freed it."""
        for block_id in parent.block_table:
            self.blocks[block_id].ref_count += 1
        child.block_table = list(parent.block_table)
        child.num_computed_tokens = parent.num_computed_tokens
