"""The handful of numbers that define a Llama-family model, read from a Hugging Face config."""
from __future__ import annotations

from dataclasses import dataclass, field

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


@dataclass
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2 always; Llama/Qwen3 when attention_bias is set
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool  # Qwen3 normalises q and k per head before RoPE
    rope: dict = field(default_factory=dict)  # rope_type, rope_theta and scaling parameters
    eos_token_ids: list[int] = field(default_factory=list)

    @classmethod
    def from_hf(cls, hf) -> "ModelConfig":
        arch = (getattr(hf, "architectures", None) or ["?"])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"unsupported architecture {arch!r}: minillm runs "
                             f"{', '.join(SUPPORTED_ARCHITECTURES)}")
        num_heads = hf.num_attention_heads
        attention_bias = bool(getattr(hf, "attention_bias", False))
        eos = hf.eos_token_id
        return cls(
            architecture=arch,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(hf, "num_key_value_heads", None) or num_heads,
            head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // num_heads,
            rms_norm_eps=hf.rms_norm_eps,
            max_position_embeddings=hf.max_position_embeddings,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            qkv_bias=arch == "Qwen2ForCausalLM" or attention_bias,
            o_bias=arch == "LlamaForCausalLM" and attention_bias,
            mlp_bias=bool(getattr(hf, "mlp_bias", False)),
            qk_norm=arch == "Qwen3ForCausalLM",
            rope=dict(hf.rope_parameters or {}),
            eos_token_ids=[] if eos is None else list(eos) if isinstance(eos, list) else [eos],
        )
