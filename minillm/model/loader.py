"""Load a Hugging Face checkpoint folder: config.json, *.safetensors and the tokenizer files.

Every way a folder can be wrong ends in one `CheckpointError` that names the problem.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from minillm.model.config import ModelConfig
from minillm.model.llama import LlamaForCausalLM
from minillm.model.rope import RotaryEmbedding

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "half": torch.float16, "float": torch.float32}


class CheckpointError(ValueError):
    """A model folder that minillm cannot load, with the reason."""


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" means float32 on a CPU (exact and fast there) and float16 on a GPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_config(path: str | Path) -> ModelConfig:
    from transformers import AutoConfig

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"model path {str(path)!r} does not exist or is not a folder")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"no config.json in {folder}")
    try:
        hf_config = AutoConfig.from_pretrained(folder)
    except Exception as e:
        raise CheckpointError(f"cannot read {folder / 'config.json'}: {e}") from e
    try:
        return ModelConfig.from_hf(hf_config)
    except ValueError as e:
        raise CheckpointError(f"{folder}: {e}") from e


def read_weights(folder: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors weights in {folder}")
    weights = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                weights[name] = f.get_tensor(name).to(dtype)
    return weights


def check_weights(weights: dict, expected: dict, folder: Path) -> None:
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(f"{folder}: missing weights {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}")
    for name, tensor in expected.items():
        if weights[name].shape != tensor.shape:
            raise CheckpointError(f"{folder}: weight {name} has shape {tuple(weights[name].shape)},"
                                  f" the config implies {tuple(tensor.shape)}")


def load_model(path: str | Path, dtype: str | torch.dtype = "auto",
               device: str | torch.device = "cpu") -> LlamaForCausalLM:
    """Build the model from `config.json` and fill it with the checkpoint's tensors."""
    folder, device = Path(path), torch.device(device)
    cfg = load_config(folder)
    dtype = resolve_dtype(dtype, device)
    with torch.device("meta"):  # no memory, no random init: the checkpoint fills every tensor
        model = LlamaForCausalLM(cfg)
    expected = model.state_dict()
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
    weights = read_weights(folder, dtype)
    check_weights(weights, expected, folder)
    model.load_state_dict({k: weights[k] for k in expected}, strict=False, assign=True)
    if cfg.tie_word_embeddings:  # assign=True replaced the shared tensor: tie it again
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope)  # buffers are not saved
    return model.to(device).eval().requires_grad_(False)


def load_tokenizer(path: str | Path):
    """The checkpoint's own tokenizer and chat template, through `transformers`."""
    from transformers import AutoTokenizer

    folder = Path(path)
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise CheckpointError(f"no tokenizer in {folder} (tokenizer.json / tokenizer_config.json)")
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {e}") from e
