"""Attention backends: how a layer's queries meet the paged KV cache.

A backend stores the new tokens' keys and values into the paged cache and computes attention
through the block tables. `get_backend("auto")` picks Triton on CUDA devices; on a CPU, the
compiled C decode kernel (`cpu`) where a C compiler can build it, else the pure-torch reference.
"""
from minillm.attention.base import (BACKEND_NAMES, AttentionBackend, AttentionMetadata,
                                    get_backend)

__all__ = ["BACKEND_NAMES", "AttentionBackend", "AttentionMetadata", "get_backend"]
