"""How big the KV cache is: the arithmetic every serving system starts from.

For every token it has seen, every layer of a transformer keeps one key vector and one value
vector per KV head. So one token costs

    2 (K and V) x num_layers x num_kv_heads x head_dim x dtype_bytes

bytes, and a request of `n` tokens costs `n` times that. Grouped-query attention (GQA) shrinks it
by using fewer KV heads than query heads. Chapter 2 checks the formula against the real cache
tensor; lab 1 asks you to write it.
"""
from __future__ import annotations

from dataclasses import dataclass

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "int8": 1}


def kv_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int,
                             dtype_bytes: int) -> int:
    """Bytes of K and V that one token occupies, summed over all layers."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def kv_cache_bytes(num_layers: int, num_kv_heads: int, head_dim: int, num_tokens: int,
                   dtype_bytes: int) -> int:
    """Bytes of K and V for `num_tokens` tokens (of one request or of a whole batch)."""
    return num_tokens * kv_cache_bytes_per_token(num_layers, num_kv_heads, head_dim, dtype_bytes)


def max_cached_tokens(budget_bytes: int, num_layers: int, num_kv_heads: int, head_dim: int,
                      dtype_bytes: int) -> int:
    """How many tokens' K and V fit in `budget_bytes` (rounded down)."""
    return budget_bytes // kv_cache_bytes_per_token(num_layers, num_kv_heads, head_dim,
                                                     dtype_bytes)


def max_concurrent_requests(budget_bytes: int, tokens_per_request: int, num_layers: int,
                            num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """How many requests of `tokens_per_request` tokens each fit in `budget_bytes` at once."""
    return max_cached_tokens(budget_bytes, num_layers, num_kv_heads, head_dim,
                             dtype_bytes) // tokens_per_request


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model that decide its memory: weights and KV cache."""

    name: str
    num_params: float  # parameters, for the weights' memory
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return kv_cache_bytes_per_token(self.num_layers, self.num_kv_heads, self.head_dim,
                                        dtype_bytes)

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        return int(self.num_params * dtype_bytes)


# Published configs (config.json of each model on the Hugging Face Hub).
PRESETS: dict[str, ModelShape] = {m.name: m for m in (
    ModelShape("Qwen2.5-0.5B", 0.494e9, 24, 14, 2, 64),
    ModelShape("Llama-2-7B", 6.74e9, 32, 32, 32, 128),
    ModelShape("Qwen2.5-7B", 7.62e9, 28, 28, 4, 128),
    ModelShape("Llama-3-8B", 8.03e9, 32, 32, 8, 128),
    ModelShape("Llama-2-13B", 13.0e9, 40, 40, 40, 128),
    ModelShape("Llama-3-70B", 70.6e9, 80, 64, 8, 128),
)}


def model_shape(config, name: str = "model") -> ModelShape:
    """The `ModelShape` of a loaded minillm model's `ModelConfig` (parameters not counted)."""
    return ModelShape(name, 0.0, config.num_layers, config.num_heads, config.num_kv_heads,
                      config.head_dim)


def memory_per_request(shape: ModelShape, context_len: int, batch_size: int,
                       dtype_bytes: int = 2) -> dict[str, float]:
    """The numbers behind chapter 2's widget, in GiB: weights, KV per request, KV for the batch."""
    gib = 1024 ** 3
    per_request = kv_cache_bytes(shape.num_layers, shape.num_kv_heads, shape.head_dim,
                                 context_len, dtype_bytes)
    return {
        "kv_per_token_kib": shape.kv_bytes_per_token(dtype_bytes) / 1024,
        "weights_gib": shape.weight_bytes(dtype_bytes) / gib,
        "kv_per_request_gib": per_request / gib,
        "kv_batch_gib": per_request * batch_size / gib,
        "total_gib": (shape.weight_bytes(dtype_bytes) + per_request * batch_size) / gib,
    }


def decode_tokens_per_second_bound(weight_bytes: float, kv_bytes: float, batch_size: int,
                                   bandwidth_gb_s: float) -> float:
    """Upper bound on decode throughput (tokens/s for the whole batch) when memory bound.

    One decode step reads every weight once (shared by the batch) and every request's KV cache,
    so it takes at least `(weight_bytes + batch_size * kv_bytes) / bandwidth`, and yields one
    token per request. `kv_bytes` is one request's cache. Batching pays because the weights are
    read once for the whole batch; the KV cache is what limits the batch.
    """
    seconds = (weight_bytes + batch_size * kv_bytes) / (bandwidth_gb_s * 1e9)
    return batch_size / seconds
