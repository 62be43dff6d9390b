"""`minillm bench accuracy`: what a precision change does to what the model says.

Two engines on the same checkpoint, the reference (float32) and the candidate (`--quantization
int8`, or another `--dtype`), measured side by side:

- held-out perplexity through the engine itself: the text is cut into windows of `--window`
  tokens and scored with `prompt_logprobs` (each token's log-probability given the ones before
  it in its window), so the number covers the very layers that serve requests;
- greedy agreement: for a set of prompts, how many of the first `--max-tokens` greedy tokens the
  candidate shares with the reference before the first difference, and how many sequences are
  identical.

    minillm bench accuracy --quantization int8         # the bundled model on held-out Austen
    minillm bench accuracy --dtype bfloat16 --text my_held_out.txt
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from minillm.assets import HELD_OUT_TEXT
from minillm.sampling_params import SamplingParams

PROMPTS = ["Once upon a time", "It is a truth universally acknowledged", "The weather was so",
           "\"My dear Emma,\" said Mr. Knightley,", "She could not", "In the morning",
           "Her father", "They walked"]


@dataclass
class Accuracy:
    perplexity: float
    tokens_scored: int
    greedy: list[list[int]]  # the greedy continuation of each prompt


def windows(token_ids: list[int], size: int) -> list[list[int]]:
    """Consecutive windows of `size` tokens (the last, shorter one dropped)."""
    return [token_ids[i:i + size] for i in range(0, len(token_ids) - size + 1, size)]


def perplexity(llm, token_windows: list[list[int]]) -> tuple[float, int]:
    """exp(mean negative log-likelihood) of every token but each window's first."""
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    outputs = llm.generate([{"prompt_token_ids": w} for w in token_windows], params,
                           use_tqdm=False)
    nll = [-lp[token].logprob for w, out in zip(token_windows, outputs)
           for token, lp in zip(w[1:], out.prompt_logprobs[1:])]
    return math.exp(sum(nll) / len(nll)), len(nll)


def measure(llm, token_windows: list[list[int]], max_tokens: int) -> Accuracy:
    ppl, scored = perplexity(llm, token_windows)
    greedy = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=max_tokens,
                                                  ignore_eos=True), use_tqdm=False)
    return Accuracy(ppl, scored, [o.outputs[0].token_ids for o in greedy])


def agreement(reference: list[list[int]], candidate: list[list[int]]) -> tuple[float, int]:
    """(mean share of tokens before the first difference, sequences identical)."""
    shares = []
    for ref, cand in zip(reference, candidate):
        same = next((i for i, (a, b) in enumerate(zip(ref, cand)) if a != b), len(ref))
        shares.append(same / len(ref))
    return sum(shares) / len(shares), sum(s == 1.0 for s in shares)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint folder (default: bundled)")
    parser.add_argument("--quantization", default=None, choices=["int8"])
    parser.add_argument("--dtype", default="float32", help="the candidate's dtype")
    parser.add_argument("--text", type=Path, default=HELD_OUT_TEXT, help="held-out text to score")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--max-windows", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)


def main(args: argparse.Namespace) -> None:
    from minillm import LLM

    reference = LLM(args.model, dtype="float32")
    ids = reference.get_tokenizer()(args.text.read_text(encoding="utf-8"))["input_ids"]
    token_windows = windows(ids, args.window)[:args.max_windows]
    ref = measure(reference, token_windows, args.max_tokens)
    del reference
    candidate = LLM(args.model, dtype=args.dtype, quantization=args.quantization)
    cand = measure(candidate, token_windows, args.max_tokens)
    share, identical = agreement(ref.greedy, cand.greedy)
    name = args.quantization or args.dtype
    print(f"held-out perplexity over {ref.tokens_scored} tokens ({args.text.name}): "
          f"float32 {ref.perplexity:.3f}, {name} {cand.perplexity:.3f} "
          f"({100 * (cand.perplexity / ref.perplexity - 1):+.2f} %)")
    print(f"greedy agreement over {len(PROMPTS)} prompts x {args.max_tokens} tokens: "
          f"{100 * share:.1f} % of tokens before the first difference, "
          f"{identical}/{len(PROMPTS)} sequences identical")
