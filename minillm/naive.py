"""The "before" picture: one request at a time, each with its own contiguous KV cache.

This is how a first serving attempt looks. It is correct (the engine is checked against it) and
slow: the GPU (or CPU) works on one sequence at a time, and every request reserves KV memory for
its maximum length up front. Chapter 1 measures it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from minillm.attention.torch_backend import causal_mask
from minillm.model import LlamaForCausalLM, load_model, load_tokenizer


class ContiguousKVCache:
    """One request's KV cache: a `[max_len, kv_heads, head_dim]` slab per layer, reserved up front."""

    def __init__(self, model: LlamaForCausalLM, max_len: int):
        cfg = model.config
        shape = (cfg.num_layers, max_len, cfg.num_kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=model.dtype, device=model.device)
        self.v = torch.zeros_like(self.k)
        self.length = 0  # tokens whose K/V are stored

    def attend(self, layer, q, k, v, scale):
        start, end = self.length, self.length + q.shape[0]
        self.k[layer, start:end], self.v[layer, start:end] = k, v
        keys, values = self.k[layer, :end], self.v[layer, :end]
        mask = None if q.shape[0] == 1 else causal_mask(q.shape[0], end, q.device)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
            attn_mask=mask, scale=scale, enable_gqa=True)
        return out.transpose(0, 1)


def pick_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    """Greedy at temperature 0, else a draw from softmax(logits / temperature)."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def stream_ids(model: LlamaForCausalLM, prompt_ids: list[int], max_new_tokens: int,
               temperature: float = 0.0, seed: int | None = None,
               stop_token_ids: tuple[int, ...] = ()) -> Iterator[int]:
    """Prefill the whole prompt in one forward pass, then decode one token per pass."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    cache = ContiguousKVCache(model, len(prompt_ids) + max_new_tokens)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    device, inputs = model.device, list(prompt_ids)
    for _ in range(max_new_tokens):
        positions = torch.arange(cache.length, cache.length + len(inputs), device=device)
        hidden = model(torch.tensor(inputs, device=device), positions, cache)
        cache.length += len(inputs)
        token = pick_token(model.compute_logits(hidden[-1]).cpu(), temperature, generator)
        yield token
        if token in stop_token_ids:
            return
        inputs = [token]


def generate_ids(model: LlamaForCausalLM, prompt_ids: list[int], max_new_tokens: int,
                 temperature: float = 0.0, seed: int | None = None,
                 stop_token_ids: tuple[int, ...] = ()) -> list[int]:
    return list(stream_ids(model, prompt_ids, max_new_tokens, temperature, seed, stop_token_ids))


@dataclass
class NaiveOutput:
    prompt: str
    text: str
    token_ids: list[int]
    ttft_s: float  # time to the first token
    latency_s: float  # time to the last token


class NaiveGenerator:
    """Serve requests one after another: the baseline every later chapter improves on."""

    def __init__(self, model: str | None = None, dtype: str = "auto", device: str = "cpu"):
        from minillm.assets import DEFAULT_MODEL

        path = model or DEFAULT_MODEL
        self.model = load_model(path, dtype=dtype, device=device)
        self.tokenizer = load_tokenizer(path)

    def generate(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int | None = None) -> NaiveOutput:
        start, ids, ttft = time.perf_counter(), [], 0.0
        prompt_ids = self.tokenizer.encode(prompt)
        eos = tuple(self.model.config.eos_token_ids)
        for token in stream_ids(self.model, prompt_ids, max_new_tokens, temperature, seed, eos):
            ttft = ttft or time.perf_counter() - start
            ids.append(token)
        return NaiveOutput(prompt, self.tokenizer.decode(ids, skip_special_tokens=True), ids,
                           ttft, time.perf_counter() - start)
