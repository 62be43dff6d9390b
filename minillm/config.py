"""Small configs: what the scheduler and the engine are told at start-up."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256  # sequences running at once
    max_num_batched_tokens: int = 2048  # tokens in one forward pass (decodes + prefill chunks)
    policy: str = "fcfs"  # "fcfs" or "priority" (lower `priority` runs sooner)
    preemption_mode: str = "recompute"  # or "swap" (to the CPU pool)

    def __post_init__(self):
        if self.policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', not {self.policy!r}")
        if self.preemption_mode not in ("recompute", "swap"):
            raise ValueError(f"preemption_mode must be 'recompute' or 'swap', "
                             f"not {self.preemption_mode!r}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be at least 1")


@dataclass
class EngineConfig:
    model: str | None = None  # a Hugging Face checkpoint folder; None = the bundled model
    dtype: str = "auto"  # auto: float32 on CPU, float16 on GPU
    device: str = "auto"  # auto: cuda if available, else cpu
    max_model_len: int | None = None  # prompt + output tokens; None = min(model's, 4096)
    block_size: int = 16
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"  # "auto", "torch", "cpu" or "triton"
    gpu_memory_utilization: float = 0.9  # share of GPU memory for weights + KV cache
    kv_cache_memory_bytes: int | None = None  # explicit KV budget (CPU default: 1 GiB)
    num_gpu_blocks_override: int | None = None  # exact number of KV blocks (tests, lessons)
    swap_space: float = 1.0  # GiB of CPU memory for swapped-out blocks
    seed: int = 0
    scheduler: SchedulerConfig = None

    def __post_init__(self):
        self.scheduler = self.scheduler or SchedulerConfig()
        if self.block_size not in (8, 16, 32, 64, 128):
            raise ValueError(f"block_size must be a power of two from 8 to 128, "
                             f"not {self.block_size}")
