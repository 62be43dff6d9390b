"""`minillm bench structured`: tokens/s with a JSON schema on half the requests vs on none.

The same batch runs three times through one `LLM`: no request constrained, half of them
(every other one) with a `json_schema`, then all of them. A constrained request pays for its
grammar's token mask every step (xgrammar fills a bitmask on the CPU, the sampler applies it to
that request's row only); the unconstrained requests beside it should not slow down beyond that.
A grammar that completes ends its request early, so each run counts the tokens it generated.
The grammar is compiled once, in the warm-up, and cached: the runs time the masks, not the
compilation.

    minillm bench structured                     # bundled model, 32 requests, 96 tokens each
    minillm bench structured --num-requests 64 --output-len 128
"""
from __future__ import annotations

import argparse
import json
import time

from minillm import LLM, SamplingParams
from minillm.structured_output import StructuredOutputsParams

# bounded strings and list, so that the object usually closes within max_tokens
NAME = {"type": "string", "maxLength": 16}
SCHEMA = {
    "type": "object",
    "properties": {
        "name": NAME,
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "friends": {"type": "array", "items": NAME, "maxItems": 3},
        "married": {"type": "boolean"},
    },
    "required": ["name", "age", "friends", "married"],
    "additionalProperties": False,
}
PROMPTS = ["Describe Mr. Darcy as a JSON object:", "Elizabeth Bennet, as JSON:",
           "A character of the novel, in JSON:", "Emma Woodhouse's record:"]
SHARES = {"none": 0.0, "half": 0.5, "all": 1.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint folder (default: bundled)")
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=96, help="max_tokens per request")
    parser.add_argument("--output-json", default=None, help="write the results here too")


def request_params(num_requests: int, output_len: int, share: float) -> list[SamplingParams]:
    """Every request samples greedily up to `output_len` tokens; the first `share` of each pair
    of requests gets the schema (half: every other request)."""
    constrained = round(share * 2)  # per pair: 0, 1 or 2
    return [SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True,
                           structured_outputs=(StructuredOutputsParams(json=SCHEMA)
                                               if i % 2 < constrained else None))
            for i in range(num_requests)]


def run(llm: LLM, num_requests: int, output_len: int, share: float) -> dict:
    params = request_params(num_requests, output_len, share)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(num_requests)]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = [len(o.outputs[0].token_ids) for o in outputs]
    constrained = [t for t, p in zip(tokens, params) if p.structured_outputs is not None]
    valid = sum(_is_json(o.outputs[0].text) for o, p in zip(outputs, params)
                if p.structured_outputs is not None)
    return {"constrained": len(constrained), "output_tokens": sum(tokens),
            "seconds": seconds, "tokens_per_s": sum(tokens) / seconds,
            "valid_json": f"{valid}/{len(constrained)}"}


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def main(args: argparse.Namespace) -> None:
    llm = LLM(args.model) if args.model else LLM()
    run(llm, 4, 8, 0.5)  # warm-up: compiles the schema's grammar once (it is cached by key)
    results = {name: run(llm, args.num_requests, args.output_len, share)
               for name, share in SHARES.items()}
    base = results["none"]["tokens_per_s"]
    print(f"{args.num_requests} requests, max_tokens {args.output_len}, greedy, ignore_eos "
          f"(a completed grammar ends its request)")
    print(f"{'json_schema on':>15} {'requests':>9} {'tokens':>7} {'seconds':>8} "
          f"{'tokens/s':>9} {'vs none':>8} {'valid JSON':>11}")
    for name, r in results.items():
        print(f"{name:>15} {r['constrained']:>9} {r['output_tokens']:>7} {r['seconds']:>8.2f} "
              f"{r['tokens_per_s']:>9.1f} {r['tokens_per_s'] / base:>8.2f} {r['valid_json']:>11}")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)
