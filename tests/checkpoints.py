"""Small random-weight Hugging Face checkpoints, built with `transformers` itself.

They are the independent reference: minillm must reproduce what `transformers` computes from the
same folder, token for token.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB_SIZE = 384
TEXT = ("The quick brown fox jumps over the lazy dog. A serving system changes how fast a model "
        "runs, never what it says. Paged attention stores keys and values in blocks. ") * 20

# name -> (transformers config class name, keyword arguments)
CONFIGS = {
    "llama-mha-tied": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4,
                                           tie_word_embeddings=True)),
    "llama-gqa-llama3": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        attention_bias=True, mlp_bias=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2-gqa": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=False)),
    "qwen3-gqa-headdim": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=1,
                                              head_dim=32, tie_word_embeddings=True)),
}


def make_tokenizer(folder: Path):
    """A byte-level BPE tokenizer trained in a blink on a fixed text, saved the HF way."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - 8, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                          "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    fast.save_pretrained(folder)
    return fast


def make_checkpoint(folder: Path, name: str, seed: int = 0, dtype=torch.float32) -> Path:
    """Write config.json, model.safetensors and the tokenizer of a random model into `folder`."""
    import transformers

    class_name, kwargs = CONFIGS[name]
    tokenizer = make_tokenizer(folder)
    config = getattr(transformers, class_name)(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():  # transformers initialises biases to 0 and norms to 1: test them too
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
            elif "norm" in name:
                param.normal_(1.0, 0.1)
    model.save_pretrained(folder)
    return folder


def prompts_of_lengths(seed: int, lengths: list[int], prefix: list[int] = ()) -> list[list[int]]:
    """Random token prompts of exactly these lengths (after an optional shared prefix)."""
    gen = torch.Generator().manual_seed(seed)
    return [list(prefix) + torch.randint(0, VOCAB_SIZE, (n,), generator=gen).tolist()
            for n in lengths]
