#!/usr/bin/env python3
"""Evaluate the bundled minillm-tiny checkpoint with plain `transformers`.

Recomputes the numbers quoted in docs/model.md and the model card:
  * held-out loss and perplexity on data/austen/valid (never trained on),
  * the same loss on an equally long stretch of the training split (to show the gap),
  * sample continuations, greedy (temperature 0) and sampled (temperature 0.8, fixed seed),
  * greedy replies through the chat template.

    python tools/get_corpus.py          # once, if data/austen/ is missing
    python tools/eval_tiny.py [--model minillm/assets/minillm-tiny]

The weights are stored as float16 and loaded here as float32, as minillm does on a CPU.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

# Re-use the training script's data pipeline, so the held-out tokens are exactly the same.
from train_tiny import DEFAULT_OUT, encode_split, heldout_loss, read_paragraphs

PROMPTS = [
    "Once upon a time",
    "It is a truth universally acknowledged",
    "The weather was so fine that",
    "\"My dear Emma,\" said Mr. Knightley,",
]
CHAT = ["How do you do?", "Will you walk with me this evening?", "What do you think of him?"]


def sample(model, tokenizer, prompt: str, temperature: float, seed: int, max_new_tokens: int) -> str:
    """Continue `prompt`; generation ends at <|endoftext|> (the end of a paragraph)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids       # starts with <|endoftext|>
    torch.manual_seed(seed)                                      # same sample on every run
    kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 \
        else {"do_sample": False}
    out = model.generate(ids, max_new_tokens=max_new_tokens, **kwargs)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def chat(model, tokenizer, message: str, max_new_tokens: int) -> str:
    """One greedy chat turn through the chat template; stops at <|end|> (generation_config)."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": message}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    out = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--model", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--data", type=Path, default=Path("data/austen"))
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_params/1e6:.2f} M parameters")

    valid = encode_split(tokenizer, read_paragraphs(args.data / "valid"))
    n_windows = (len(valid) - 1) // args.seq_len
    train = encode_split(tokenizer, read_paragraphs(args.data / "train"))
    for name, stream in (("held-out", valid), ("train (first stretch)", train)):
        loss = heldout_loss(model, stream, args.seq_len, max_windows=n_windows)
        print(f"{name:22s} loss {loss:.4f}  perplexity {math.exp(loss):7.2f}  "
              f"({n_windows} windows of {args.seq_len} tokens)")

    for temperature in (0.0, 0.8):
        print(f"\n--- temperature {temperature}" + (f", seed {args.seed}" if temperature else ""))
        for prompt in PROMPTS:
            text = sample(model, tokenizer, prompt, temperature, args.seed, args.max_new_tokens)
            print(f"{prompt}|{text}\n")
    print("--- chat, greedy")
    for message in CHAT:
        print(f"user: {message}\nassistant: {chat(model, tokenizer, message, args.max_new_tokens)}\n")


if __name__ == "__main__":
    main()
