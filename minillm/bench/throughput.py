"""`minillm bench throughput`: offline tokens/s of minillm against `transformers`, in one run.

The workload follows nano-vllm's benchmark: N requests with random prompt and output lengths,
`ignore_eos`, so every request generates exactly its output length. The same weights run:

* minillm: all requests handed to `LLM.generate` at once (continuous batching);
* transformers, sequential: one request at a time with `generate` (a subset, to keep it short);
* transformers, static batches: padded batches of `--hf-batch-size`, each running until its
  longest request is done; only the tokens each request asked for count;
* the bare model: the engine's own forward passes, timed alone, on the very same batches (no
  scheduling, input preparation, sampling or detokenizing). "Engine efficiency" is minillm's
  tokens/s over the bare model's: the share of the time the engine spends in the model.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minillm import LLM, SamplingParams
from minillm.attention import BACKEND_NAMES


@dataclass
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def output_tokens(self) -> int:
        return sum(self.output_lens)


def make_workload(num_requests: int, vocab: int, min_len: int, max_len: int,
                  seed: int) -> Workload:
    g = torch.Generator().manual_seed(seed)
    lens = lambda: torch.randint(min_len, max_len + 1, (num_requests,), generator=g).tolist()
    prompt_lens, output_lens = lens(), lens()
    prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in prompt_lens]
    return Workload(prompts, output_lens)


def run_minillm(llm: LLM, work: Workload) -> tuple[float, float]:
    """Wall seconds for the whole workload, and the seconds of it spent in the model's forward
    passes (timed around the runner, so the bare model's throughput on the very same batches
    is output_tokens / forward_seconds)."""
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
              for n in work.output_lens]
    prompts = [{"prompt_token_ids": p} for p in work.prompts]
    llm.generate(prompts[:2], params[:2], use_tqdm=False)  # warm-up
    runner, forward_seconds = llm.engine.runner, [0.0]
    untimed = runner.run, runner.model.compute_logits  # the forward, and the LM head

    def timed(function):
        def timed_call(*args):
            start = time.perf_counter()
            result = function(*args)
            if result.is_cuda:
                torch.cuda.synchronize()
            forward_seconds[0] += time.perf_counter() - start
            return result
        return timed_call

    runner.run, runner.model.compute_logits = map(timed, untimed)
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    runner.run, runner.model.compute_logits = untimed
    return time.perf_counter() - start, forward_seconds[0]


@torch.inference_mode()
def run_hf_sequential(model, work: Workload, count: int) -> tuple[float, int]:
    """Seconds and output tokens for the first `count` requests, one after another."""
    start, tokens = time.perf_counter(), 0
    for prompt, n in list(zip(work.prompts, work.output_lens))[:count]:
        model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n,
                       min_new_tokens=n, pad_token_id=0)
        tokens += n
    return time.perf_counter() - start, tokens


@torch.inference_mode()
def run_hf_static(model, work: Workload, batch_size: int, count: int) -> tuple[float, int]:
    """Left-padded static batches: a batch runs until its longest request is done."""
    start, tokens = time.perf_counter(), 0
    pairs = list(zip(work.prompts, work.output_lens))[:count]
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i:i + batch_size]
        width = max(len(p) for p, _ in batch)
        ids = torch.tensor([[0] * (width - len(p)) + p for p, _ in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in batch])
        longest = max(n for _, n in batch)
        model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=longest,
                       min_new_tokens=longest, pad_token_id=0)
        tokens += sum(n for _, n in batch)
    return time.perf_counter() - start, tokens


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu} ({simd_extensions()}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def simd_extensions() -> str:
    """The vector extensions that decide which kernels a CPU runs (bf16 needs AVX-512 or AMX)."""
    from minillm.attention.cpu_backend import cpu_isa
    flags = set(cpu_isa().split())
    known = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "neon", "asimd"]
    return " ".join(f for f in known if f in flags) or "no AVX2/AVX-512/NEON reported"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint folder (default: bundled)")
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--min-len", type=int, default=16, help="shortest prompt and output")
    parser.add_argument("--max-len", type=int, default=256, help="longest prompt and output")
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--hf-sequential-requests", type=int, default=16,
                        help="requests for the (slow) sequential transformers run")
    parser.add_argument("--hf-static-requests", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--attention-backend", default="auto", choices=BACKEND_NAMES)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="weights and activations, for minillm and transformers alike")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for every run (default: torch's choice)")
    parser.add_argument("--output-json", default=None)


def main(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    llm = LLM(args.model, attention_backend=args.attention_backend, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens, seed=args.seed)
    work = make_workload(args.num_requests, llm.engine.model.config.vocab_size, args.min_len,
                         args.max_len, args.seed)
    seconds, forward_seconds = run_minillm(llm, work)
    minillm_tps = work.output_tokens / seconds
    hf = AutoModelForCausalLM.from_pretrained(llm.engine.model_path,
                                              dtype=getattr(torch, args.dtype)).eval()
    seq_s, seq_tokens = run_hf_sequential(hf, work, args.hf_sequential_requests)
    static_s, static_tokens = run_hf_static(hf, work, args.hf_batch_size,
                                            args.hf_static_requests)
    result = {
        "machine": machine(), "model": llm.engine.model_path,
        "requests": args.num_requests, "output_tokens": work.output_tokens,
        "minillm_tokens_per_s": minillm_tps,
        "hf_sequential_tokens_per_s": seq_tokens / seq_s,
        "hf_static_tokens_per_s": static_tokens / static_s,
        "bare_model_tokens_per_s": work.output_tokens / forward_seconds,
    }
    result["vs_hf_sequential"] = minillm_tps / result["hf_sequential_tokens_per_s"]
    result["vs_hf_static"] = minillm_tps / result["hf_static_tokens_per_s"]
    result["engine_efficiency"] = minillm_tps / result["bare_model_tokens_per_s"]
    report(result, args)
    return result


def report(r: dict, args) -> None:
    print(f"machine: {r['machine']}\nmodel: {r['model']}")
    print(f"workload: {r['requests']} requests, prompts and outputs {args.min_len}-{args.max_len}"
          f" tokens, {r['output_tokens']} output tokens")
    rows = [("minillm (continuous batching)", r["minillm_tokens_per_s"], 1.0),
            (f"transformers sequential ({args.hf_sequential_requests} requests)",
             r["hf_sequential_tokens_per_s"], 1 / r["vs_hf_sequential"]),
            (f"transformers static batches of {args.hf_batch_size}",
             r["hf_static_tokens_per_s"], 1 / r["vs_hf_static"]),
            ("bare model forward passes on the same batches",
             r["bare_model_tokens_per_s"], 1 / r["engine_efficiency"])]
    print(f"\n{'run':<50}{'output tok/s':>14}{'minillm ×':>11}")
    for name, tps, ratio in rows:
        print(f"{name:<50}{tps:>14.1f}{1 / ratio:>11.2f}")
    print(f"\nengine efficiency (minillm / bare model): {r['engine_efficiency']:.2f}")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m minillm.bench.throughput",
                                     description=__doc__)
    add_arguments(parser)
    main(parser.parse_args())
