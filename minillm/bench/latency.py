"""`minillm bench latency`: one request alone, what a learner feels first.

For minillm, transformers and the peers whose virtualenvs `minillm bench peers` has made
(CTranslate2, llama.cpp), each in its own process: the time to first token (a 1-token generate:
the prefill and one sampled token) and ms per output token at batch 1 (from an N-token generate,
less the first token), best of 3. Then minillm's per-step overhead on the bundled model: the
median wall time of a decode step through `LLMEngine.step()` against a bare forward of the same
shape (the same model and context length, one token, the logits of that token, through a
contiguous KV cache): what scheduling, input preparation, sampling and detokenizing cost on top
of the GEMMs and attention.

    minillm bench latency                          # bundled model
    minillm bench latency --model qwen2.5-0.5b     # a random-weight checkpoint of that shape
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from minillm.bench.peers import (ENGINES, PEERS, SHAPES, bundled_model, converted_model,
                                 cpu_info, make_requests, peer_python, run_worker,
                                 shaped_checkpoint)


def resolve_model(model: str | None) -> Path:
    if model is None:
        return bundled_model()
    return shaped_checkpoint(model) if model in SHAPES else Path(model)


def available_engines() -> list[str]:
    """minillm and transformers always; a peer only where its virtualenv exists already."""
    return [name for name, (runtime, _, _) in ENGINES.items()
            if runtime in ("minillm", "transformers") or (PEERS / runtime / ".installed").exists()]


def batch_one(folder: Path, engines: list[str], args: argparse.Namespace) -> dict[str, dict]:
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    prompts, lens = make_requests(2, vocab, (args.prompt_len,) * 2, (args.output_len,) * 2,
                                  args.seed)
    results = {}
    for engine in engines:
        runtime, precision, _ = ENGINES[engine]
        python = peer_python(runtime)
        spec = dict(mode="latency", runtime=runtime, precision=precision, threads=args.threads,
                    model=str(converted_model(runtime, precision, folder, python)),
                    prompts=prompts, output_lens=lens, batch_size=1, parallel=1,
                    seed=args.seed)
        results[engine] = run_worker(python, spec)
    return results


def step_overhead(prompt_len: int, steps: int, seed: int) -> dict:
    """Median decode-step wall time through the engine vs a bare forward of the same shape."""
    import torch

    from minillm import LLM, SamplingParams
    from minillm.naive import ContiguousKVCache

    engine = LLM(dtype="float32", seed=seed).engine
    prompt = make_requests(1, engine.model.config.vocab_size, (prompt_len, prompt_len),
                           (1, 1), seed)[0][0]
    params = SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True)

    def engine_steps(request_id: str) -> list[float]:
        engine.add_request(request_id, {"prompt_token_ids": prompt}, params)
        times = []
        while engine.has_unfinished_requests():
            start = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - start)
        return times[1:]  # the first step is the prefill

    engine_steps("warm-up")
    step_times = engine_steps("timed")

    model, bare_times = engine.model, []
    cache = ContiguousKVCache(model, prompt_len + steps + 1)
    device = model.device
    with torch.inference_mode():
        model(torch.tensor(prompt, device=device), torch.arange(prompt_len, device=device), cache)
        cache.length = prompt_len
        token = torch.tensor([prompt[-1]], device=device)
        for _ in range(len(step_times)):
            start = time.perf_counter()
            hidden = model(token, torch.tensor([cache.length], device=device), cache)
            model.compute_logits(hidden[-1:])
            if device.type == "cuda":
                torch.cuda.synchronize()
            bare_times.append(time.perf_counter() - start)
            cache.length += 1
    step, bare = statistics.median(step_times), statistics.median(bare_times)
    return dict(step_ms=1000 * step, bare_forward_ms=1000 * bare, overhead_ms=1000 * (step - bare),
                overhead_share=(step - bare) / step, steps=len(step_times))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help=f"checkpoint folder, or one of {', '.join(SHAPES)} (a random-weight "
                             "checkpoint of that shape); default: the bundled model")
    parser.add_argument("--engines", nargs="+", default=None, choices=list(ENGINES),
                        help="default: minillm, transformers and every peer already installed")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for every engine (default: all cores)")
    parser.add_argument("--overhead-steps", type=int, default=128,
                        help="decode steps timed for the per-step overhead (0: skip it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-json", default=None)


def main(args: argparse.Namespace) -> dict:
    import os

    args.threads = args.threads or os.cpu_count()
    folder = resolve_model(args.model)
    info = cpu_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, ISA {' '.join(info['isa'])}; "
          f"{args.threads} thread(s); load average {info['load'][0]:.2f}")
    print(f"model: {folder}; one request: prompt {args.prompt_len} tokens, output "
          f"{args.output_len}, greedy\n")
    results = batch_one(folder, args.engines or available_engines(), args)
    print("| engine | TTFT ms | ms / output token |")
    print("| --- | --- | --- |")
    for engine, r in results.items():
        cells = (f"{r['ttft_ms']:.1f} | {r['ms_per_token']:.2f}" if "error" not in r
                 else f"{r['error']} | -")
        print(f"| {engine} | {cells} |")
    report = dict(machine=info, model=str(folder), batch_one=results)
    if args.overhead_steps:
        import torch

        torch.set_num_threads(args.threads)
        o = step_overhead(args.prompt_len, args.overhead_steps, args.seed)
        report["step_overhead"] = o
        print(f"\nminillm per-step overhead, bundled model, batch 1 ({o['steps']} decode steps, "
              f"medians): engine step {o['step_ms']:.2f} ms, bare forward {o['bare_forward_ms']:.2f}"
              f" ms, overhead {o['overhead_ms']:.2f} ms ({100 * o['overhead_share']:.0f} % of "
              f"the step)")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2))
    return report
