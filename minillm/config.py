"""The engine's configuration: one dataclass, the single source of every setting.

`LLM(model, **kwargs)` takes these fields as keyword arguments and the CLI derives its flags from
them (`--max-num-seqs` for `max_num_seqs`, ...), so each setting has one name - vLLM's - one
default and one check, wherever it is given.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from minillm.attention.base import BACKEND_NAMES

DTYPES = ["auto", "float32", "float16", "bfloat16"]
DTYPE_ALIASES = {"half": "float16", "float": "float32"}  # vLLM's other spellings


def setting(default, help: str, choices: list | None = None):
    """A field with the help text (and allowed values) its CLI flag shows."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class EngineConfig:
    model: str | None = setting(None, "Hugging Face checkpoint folder (default: the bundled "
                                      "minillm-tiny)")
    dtype: str = setting("auto", "weights and KV cache (auto: float32 on CPU, float16 on GPU)",
                         DTYPES + list(DTYPE_ALIASES))
    device: str = setting("auto", "auto: cuda if available, else cpu", ["auto", "cpu", "cuda"])
    max_model_len: int | None = setting(None, "prompt + output tokens (default: the model's, "
                                              "at most 4096)")
    block_size: int = setting(16, "tokens per KV block", [8, 16, 32, 64, 128])
    max_num_seqs: int = setting(256, "sequences running at once")
    max_num_batched_tokens: int = setting(2048, "tokens in one forward pass (decodes + prefill "
                                                "chunks)")
    enable_prefix_caching: bool = setting(True, "reuse the KV blocks of shared prompt prefixes")
    scheduling_policy: str = setting("fcfs", "fcfs, or priority (lower `priority` runs sooner)",
                                     ["fcfs", "priority"])
    preemption_mode: str = setting("recompute", "what a preempted sequence loses: its KV cache "
                                                "(recompute), or it is swapped to the CPU",
                                   ["recompute", "swap"])
    attention_backend: str = setting("auto", "auto: cpu (a compiled C decode kernel) on a CPU "
                                             "where it builds, triton on a GPU", BACKEND_NAMES)
    gpu_memory_utilization: float = setting(0.9, "share of GPU memory for weights and KV cache")
    kv_cache_memory_bytes: int | None = setting(None, "KV cache size in bytes (CPU default: "
                                                      "1 GiB)")
    num_gpu_blocks_override: int | None = setting(None, "exact number of KV blocks (tests, "
                                                        "lessons)")
    quantization: str | None = setting(None, "int8: int8 weights and 8-bit dynamic activations "
                                             "(CPU, float32)", ["int8"])
    swap_space: float = setting(1.0, "GiB of CPU memory for swapped-out sequences")
    seed: int = setting(0, "seed of the random samples of unseeded requests")
    kv_events_config: str | None = setting(None, "publish the prefix cache's changes for a "
                                                 "router, as vLLM does; JSON: "
                                                 "'{\"enable_kv_cache_events\": true, "
                                                 "\"endpoint\": \"tcp://*:5557\"}'")

    def __post_init__(self):
        self.dtype = DTYPE_ALIASES.get(self.dtype, self.dtype)
        for f in fields(self):
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in (*choices, f.default):
                raise ValueError(f"{f.name} must be one of {choices}, "
                                 f"not {getattr(self, f.name)!r}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be at least 1")
        if self.kv_events_config is not None:  # a bad one fails here, not in the engine
            from minillm.engine.kv_events import KVEventsConfig
            KVEventsConfig.from_json(self.kv_events_config)
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be at least 2, not {self.max_model_len}")
