"""Runs one step's plan: the block moves, one forward pass over the paged KV cache, the sampler.

    SchedulerOutput ──► move_blocks ──► prepare (ids, positions, slots) ──► model ──► sample
"""
from __future__ import annotations

import torch

from minillm.attention.base import AttentionBackend, AttentionMetadata
from minillm.engine.block_manager import BlockMoves
from minillm.engine.scheduler import SchedulerOutput
from minillm.model import LlamaForCausalLM
from minillm.sampling import AllowedTokens, SamplerOutput, sample, score_prompt


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

    def move_blocks(self, moves: BlockMoves) -> None:
        """Carry out the block manager's recorded data moves, in this order."""
        for src, dst in moves.swap_out:
            self.cpu_k[:, dst], self.cpu_v[:, dst] = self.k[:, src].cpu(), self.v[:, src].cpu()
        for src, dst in moves.swap_in:
            self.k[:, dst], self.v[:, dst] = self.cpu_k[:, src], self.cpu_v[:, src]
        for src, dst in moves.copies:
            self.k[:, dst], self.v[:, dst] = self.k[:, src], self.v[:, src]


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, cache: PagedKVCache, block_size: int,
                 eos_token_ids: list[int]):
        self.model, self.cache, self.block_size = model, cache, block_size
        self.eos_token_ids = eos_token_ids  # min_tokens forbids them
        self.device = model.device

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, allowed: AllowedTokens | None = None) -> SamplerOutput:
        """Run the plan: move blocks, compute the scheduled tokens, sample one token for each of
        `out.sampled_seqs` (within its grammar's `allowed` tokens, if it has one)."""
        self.cache.move_blocks(out.moves)  # even when nothing runs: a swap-in must land now
        if not out.seqs:
            return SamplerOutput([], [], [])
        rows = self._sample_rows(out)
        unique_rows = list(dict.fromkeys(rows))
        hidden = self.run(out)
        logits = self.model.compute_logits(hidden[unique_rows])
        if len(unique_rows) < len(rows):  # parallel samples: repeat their prompt's row
            logits = logits[[unique_rows.index(row) for row in rows]]
        seqs = out.sampled_seqs
        # Token histories only for the rows whose sampling reads them: copying every row's
        # tokens each step would cost more than the sampling itself.
        history = [s.params.uses_token_history for s in seqs]
        prompts = [s.token_ids[:s.num_prompt_tokens] if h else [] for s, h in zip(seqs, history)]
        outputs = [s.output_token_ids if h else [] for s, h in zip(seqs, history)]
        sampled = sample(logits, [s.params for s in seqs], prompts, outputs,
                         [s.generator for s in seqs], self.eos_token_ids, allowed)
        sampled.prompt_logprobs = self._score_prompts(out, hidden)
        return sampled

    def _score_prompts(self, out: SchedulerOutput, hidden: torch.Tensor):
        """Prompt logprobs of the prompt tokens this step computed, for the requests that ask.
        Only their rows go through the LM head: logits for every prefill token would cost
        vocab x tokens."""
        scored, row = {}, 0
        for seq, n in zip(out.seqs, out.num_new_tokens):
            first = seq.num_computed_tokens
            # The hidden state at position p predicts the prompt token at p + 1. Sample 0
            # computes the prompt; once it has outputs, a recompute has scored it already.
            last = min(first + n, seq.num_prompt_tokens - 1)
            if (seq.params.prompt_logprobs is not None and seq.index == 0
                    and not seq.output_token_ids and last > first):
                logits = self.model.compute_logits(hidden[row:row + last - first])
                scored[seq.request_id] = score_prompt(
                    logits, seq.token_ids[first + 1:last + 1], seq.params.prompt_logprobs,
                    start=first + 1)
            row += n
        return scored

    @staticmethod
    def _sample_rows(out: SchedulerOutput) -> list[int]:
        """Per sampled sequence, the flat batch row of the last token of the sequence it samples
        from (parallel samples of one prompt share a row)."""
        last_row, end = [], 0
        for n in out.num_new_tokens:
            end += n
            last_row.append(end - 1)
        return [last_row[row] for row in out.sample_rows]

    def prepare(self, batch: SchedulerOutput):
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
    def run(self, batch: SchedulerOutput) -> torch.Tensor:
        """One forward pass; returns the last layer's hidden states of every token computed."""
        input_ids, positions, self.cache.meta = self.prepare(batch)
        return self.model(input_ids, positions, self.cache)
