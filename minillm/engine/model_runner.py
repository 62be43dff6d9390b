"""Turns a scheduled batch into one forward pass over the paged KV cache."""
from __future__ import annotations

import torch

from minillm.attention.base import AttentionBackend, AttentionMetadata
from minillm.engine.scheduler import ScheduledBatch
from minillm.model import LlamaForCausalLM


class PagedKVCache:
    """The engine's KV cache: K and V as `[layers, num_blocks, block_size, kv_heads, head_dim]`,
    allocated once, plus a CPU pool of the same block shape for swapped-out sequences."""

    def __init__(self, model: LlamaForCausalLM, num_blocks: int, block_size: int,
                 num_cpu_blocks: int, backend: AttentionBackend):
        cfg = model.config
        shape = (cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=model.dtype, device=model.device)
        self.v = torch.zeros_like(self.k)
        cpu_shape = (cfg.num_layers, num_cpu_blocks, *shape[2:])
        self.cpu_k = torch.zeros(cpu_shape, dtype=model.dtype)
        self.cpu_v = torch.zeros_like(self.cpu_k)
        self.backend = backend
        self.meta: AttentionMetadata | None = None  # set for each step

    def attend(self, layer, q, k, v, scale):
        return self.backend.forward(q, k, v, self.k[layer], self.v[layer], self.meta, scale)

    def move_blocks(self, swap_out, swap_in, copies) -> None:
        """Carry out the block manager's recorded data moves, in this order."""
        for src, dst in swap_out:
            self.cpu_k[:, dst], self.cpu_v[:, dst] = self.k[:, src].cpu(), self.v[:, src].cpu()
        for src, dst in swap_in:
            self.k[:, dst], self.v[:, dst] = self.cpu_k[:, src], self.cpu_v[:, src]
        for src, dst in copies:
            self.k[:, dst], self.v[:, dst] = self.k[:, src], self.v[:, src]


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, cache: PagedKVCache, block_size: int):
        self.model, self.cache, self.block_size = model, cache, block_size
        self.device = model.device

    def prepare(self, batch: ScheduledBatch):
        """Flatten the batch: token ids, positions, and where each token's K/V goes."""
        input_ids, positions, slots, query_start, seq_lens = [], [], [], [0], []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            input_ids += seq.token_ids[start:start + n]
            for pos in range(start, start + n):
                positions.append(pos)
                slots.append(seq.block_table[pos // self.block_size] * self.block_size
                             + pos % self.block_size)
            query_start.append(query_start[-1] + n)
            seq_lens.append(start + n)
        width = max(len(seq.block_table) for seq in batch.seqs)
        tables = [seq.block_table + [0] * (width - len(seq.block_table)) for seq in batch.seqs]
        meta = AttentionMetadata(
            slot_mapping=self._tensor(slots, torch.int64),
            query_start_loc=self._tensor(query_start, torch.int32),
            seq_lens=self._tensor(seq_lens, torch.int32),
            block_tables=self._tensor(tables, torch.int32),
            max_query_len=max(batch.num_new_tokens), max_seq_len=max(seq_lens))
        return self._tensor(input_ids, torch.int64), self._tensor(positions, torch.int64), meta

    def _tensor(self, data, dtype):
        return torch.tensor(data, dtype=dtype, device=self.device)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, sample_rows: list[int]) -> torch.Tensor:
        """One forward pass; returns float32 logits of the tokens at `sample_rows` (the last token
        of each sequence that completes its prompt or decodes this step)."""
        input_ids, positions, self.cache.meta = self.prepare(batch)
        hidden = self.model(input_ids, positions, self.cache)
        return self.model.compute_logits(hidden[sample_rows])
