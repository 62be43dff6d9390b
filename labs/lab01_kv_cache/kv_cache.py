"""Lab 1: size the KV cache. Fill in each function, then run `make grade LAB=lab01`.

The reference lives in `minillm/memory/sizing.py` (look only after you tried!).
"""
from __future__ import annotations


def kv_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int,
                             dtype_bytes: int) -> int:
    """Bytes of K and V that one token occupies, summed over all layers.

    Every layer stores, for every token, one key vector and one value vector per KV head; each
    vector has `head_dim` numbers of `dtype_bytes` bytes (2 for fp16/bf16, 4 for fp32).

    Hint: there are two tensors per layer (K and V). With grouped-query attention, only the KV
    heads count, not the query heads.
    """
    raise NotImplementedError("Task 1.1: bytes of K and V per token")


def kv_cache_bytes(num_layers: int, num_kv_heads: int, head_dim: int, num_tokens: int,
                   dtype_bytes: int) -> int:
    """Bytes of K and V for `num_tokens` tokens (of one request or of a whole batch).

    Hint: reuse `kv_cache_bytes_per_token`.
    """
    raise NotImplementedError("Task 1.2: bytes of K and V for num_tokens tokens")


def max_cached_tokens(budget_bytes: int, num_layers: int, num_kv_heads: int, head_dim: int,
                      dtype_bytes: int) -> int:
    """How many tokens' K and V fit in `budget_bytes` (rounded down: a token is whole or absent)."""
    raise NotImplementedError("Task 1.3: tokens that fit in a memory budget")


def max_concurrent_requests(budget_bytes: int, tokens_per_request: int, num_layers: int,
                            num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """How many requests of `tokens_per_request` tokens each fit in `budget_bytes` at once.

    This is the number a serving system that reserves every request's full length up front can
    run in parallel. Hint: a request only counts if all of its tokens fit.
    """
    raise NotImplementedError("Task 1.4: requests that fit in a memory budget")
