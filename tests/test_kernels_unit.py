"""Kernel-side logic that needs neither a GPU nor the interpreter (runs in the unit suite)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch


def test_split_heuristic_fills_the_gpu_without_tiny_partitions():
    from minillm_kernels import choose_num_splits
    from minillm_kernels.paged_decode import MAX_SPLITS, MIN_PARTITION_TOKENS

    h100 = 132
    # Many sequences: already 4 programs per SM or more -> no split.
    assert choose_num_splits(256, 8, 4, 4096, h100) == 1
    # Batch 64 x 8 KV heads = 512 programs: 2 splits make ~8 per SM.
    assert choose_num_splits(64, 8, 4, 4096, h100) == 2
    # Few long sequences: many splits, but partitions stay >= MIN_PARTITION_TOKENS.
    assert choose_num_splits(2, 8, 4, 4096, h100) == 4096 // MIN_PARTITION_TOKENS
    assert choose_num_splits(4, 8, 4, 300, h100) == 2
    assert choose_num_splits(1, 1, 1, 10**6, h100) == MAX_SPLITS
    # Short contexts never split.
    assert choose_num_splits(1, 1, 1, MIN_PARTITION_TOKENS, h100) == 1
    # Groups of more than 16 query heads take several programs per KV head already.
    assert choose_num_splits(16, 2, 32, 4096, h100) < choose_num_splits(16, 2, 16, 4096, h100)


@pytest.mark.parametrize("head_dim,dtype,message", [
    (48, torch.float16, "head_dim"),
    (64, torch.float64, "caches"),
])
def test_backend_refuses_what_it_has_no_kernels_for(head_dim, dtype, message):
    from minillm.attention.triton_backend import TritonAttentionBackend

    q = torch.zeros(1, 2, head_dim, dtype=dtype)
    cache = torch.zeros(2, 16, 1, head_dim, dtype=dtype)
    with pytest.raises(ValueError, match=message):
        TritonAttentionBackend._check_supported(q, cache)


def test_backend_on_cpu_without_interpreter_says_what_to_do():
    """Without TRITON_INTERPRET=1 (set before triton is imported) a CPU run must fail clearly."""
    code = (
        "import torch\n"
        "from minillm.attention.triton_backend import TritonAttentionBackend\n"
        "q = torch.zeros(1, 2, 64)\n"
        "cache = torch.zeros(2, 16, 1, 64)\n"
        "TritonAttentionBackend._check_supported(q, cache)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "TRITON_INTERPRET=1" in result.stderr


def test_gpu_benchmark_refuses_clearly_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the benchmark would run")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "tools/bench_paged_decode.py"], env=env,
                            capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode != 0
    assert "no CUDA GPU found" in result.stderr
