"""`minillm plan`: how many KV blocks one replica gets, how many sequences fit, how many replicas
a target load needs: the numbers behind `maxReplicas`.

    KV budget      = GPU memory x gpu_memory_utilization - weights - activations
    block bytes    = 2 (K and V) x layers x block_size x KV heads x head_dim x bytes per element
    KV blocks      = KV budget // block bytes
    sequences      = KV blocks // blocks per sequence (ceil(seq_len / block_size)), <= max_num_seqs
    replicas       = ceil(target requests/s / one replica's goodput)   (autoscale.replicas_needed)

The budget follows the engine's own (`LLMEngine._kv_budget`): the same rough activation bound
(`max_num_batched_tokens x (vocab + 16 x hidden) x 4` bytes), and the weights counted from the
model built on PyTorch's meta device (exact, without loading or allocating anything). What it
leaves out: the CUDA context and the allocator's fragmentation, a few hundred MiB a card.

One replica's goodput is measured, not guessed: run `minillm bench serve --goodput ttft:MS
tpot:MS --save-result` against one replica on the target GPU, at the load you expect, and pass
the JSON it writes (`--bench-result`). Goodput counts only the requests that met every limit.

    minillm plan --model ./Llama-3.1-8B --gpu-memory-gib 80 --seq-len 4096 \\
        --bench-result serve-64c.json --target-rps 20
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from minillm.bench.autoscale import replicas_needed

BYTES_PER_ELEMENT = {"float32": 4, "float16": 2, "bfloat16": 2}
GIB = 1 << 30


@dataclass
class ReplicaPlan:
    weight_bytes: int
    activation_bytes: int
    kv_budget_bytes: int
    block_bytes: int
    num_blocks: int
    blocks_per_seq: int
    max_concurrent_seqs: int


def count_parameters(model_path: str | Path) -> int:
    """Parameters of the model minillm builds from `config.json`, on the meta device (no memory)."""
    import torch

    from minillm.model.llama import LlamaForCausalLM
    from minillm.model.loader import load_config

    cfg = load_config(model_path)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    shapes = model.state_dict()
    if cfg.tie_word_embeddings:  # one tensor, counted once (as the checkpoint stores it)
        shapes.pop("lm_head.weight")
    return sum(t.numel() for t in shapes.values())


def plan_replica(cfg, num_parameters: int, gpu_memory_bytes: int,
                 gpu_memory_utilization: float = 0.9, dtype: str = "float16",
                 block_size: int = 16, max_num_batched_tokens: int = 2048,
                 max_num_seqs: int = 256, seq_len: int = 4096) -> ReplicaPlan:
    """One replica's KV cache on one GPU. `cfg` is minillm's `ModelConfig`."""
    elem = BYTES_PER_ELEMENT[dtype]
    weights = num_parameters * elem
    activations = max_num_batched_tokens * (cfg.vocab_size + 16 * cfg.hidden_size) * 4
    budget = int(gpu_memory_bytes * gpu_memory_utilization) - weights - activations
    block_bytes = 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * elem
    num_blocks = max(0, budget // block_bytes)
    per_seq = math.ceil(seq_len / block_size)
    return ReplicaPlan(weights, activations, budget, block_bytes, num_blocks, per_seq,
                       min(num_blocks // per_seq, max_num_seqs))


def replica_goodput(results: list[dict]) -> tuple[float, dict]:
    """The best measured goodput (requests/s within the SLO) among `bench serve` results, and
    the SLO it was measured at. Every result must have been run with the same --goodput."""
    if not results:
        raise ValueError("give at least one `minillm bench serve --save-result` JSON")
    slos = {json.dumps(r.get("goodput_limits_ms") or {}, sort_keys=True) for r in results}
    if any(r.get("request_goodput") is None for r in results) or slos == {"{}"}:
        raise ValueError("the bench results have no goodput: run `minillm bench serve` with "
                         "--goodput ttft:MS tpot:MS (the SLO) and --save-result")
    if len(slos) > 1:
        raise ValueError(f"the bench results were measured at different SLOs: {sorted(slos)}")
    return max(r["request_goodput"] for r in results), results[0]["goodput_limits_ms"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("plan")
    g.add_argument("--model", default=None,
                   help="checkpoint folder with config.json (default: the bundled minillm-tiny)")
    g.add_argument("--gpu-memory-gib", type=float, required=True,
                   help="memory of one GPU, in GiB (80 for an H100 80GB)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--dtype", default="float16", choices=sorted(BYTES_PER_ELEMENT),
                   help="weights and KV cache")
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--max-num-batched-tokens", type=int, default=2048)
    g.add_argument("--max-num-seqs", type=int, default=256)
    g.add_argument("--seq-len", type=int, default=None,
                   help="prompt + output tokens of one sequence (default: max_model_len)")
    g.add_argument("--bench-result", type=Path, nargs="*", default=[],
                   help="`minillm bench serve --goodput ... --save-result` JSON of one replica")
    g.add_argument("--target-rps", type=float, default=None,
                   help="requests/s the deployment must serve within the SLO")


def main(args: argparse.Namespace) -> dict:
    from minillm.engine.llm_engine import default_model
    from minillm.model.loader import load_config

    model = args.model or default_model()
    if Path(model).name == "config.json":
        model = str(Path(model).parent)
    cfg = load_config(model)
    seq_len = args.seq_len or min(cfg.max_position_embeddings, 4096)
    p = plan_replica(cfg, count_parameters(model), int(args.gpu_memory_gib * GIB),
                     args.gpu_memory_utilization, args.dtype, args.block_size,
                     args.max_num_batched_tokens, args.max_num_seqs, seq_len)
    line = lambda label, value: print(f"{label:<44}{value}")
    print("{s:{c}^60}".format(s=" minillm plan: one replica ", c="="))
    line("Model:", f"{model} ({cfg.num_layers} layers, {cfg.num_kv_heads} KV heads x "
                   f"{cfg.head_dim})")
    line("GPU memory x utilization (GiB):",
         f"{args.gpu_memory_gib:g} x {args.gpu_memory_utilization:g}")
    line("Weights (GiB):", f"{p.weight_bytes / GIB:.2f}")
    line("Activations, rough bound (GiB):", f"{p.activation_bytes / GIB:.2f}")
    line("KV cache budget (GiB):", f"{p.kv_budget_bytes / GIB:.2f}")
    line("KV block (MiB, tokens):", f"{p.block_bytes / 2**20:.3f}, {args.block_size}")
    line("KV blocks per replica:", p.num_blocks)
    line(f"Max concurrent sequences of {seq_len} tokens:", p.max_concurrent_seqs)
    result = {"num_blocks": p.num_blocks, "max_concurrent_seqs": p.max_concurrent_seqs,
              "seq_len": seq_len}
    if p.max_concurrent_seqs == 0:
        print(f"not even one sequence of {seq_len} tokens fits: a bigger GPU, a shorter "
              f"--seq-len, or a smaller model")
    if args.bench_result:
        goodput, slo = replica_goodput([json.loads(f.read_text()) for f in args.bench_result])
        slo_text = ", ".join(f"{k} <= {v:g} ms" for k, v in slo.items())
        line("One replica's goodput (req/s):", f"{goodput:.2f} ({slo_text})")
        result["goodput_per_replica"] = goodput
        if args.target_rps is not None:
            replicas = replicas_needed(args.target_rps, goodput)
            line(f"Replicas for {args.target_rps:g} req/s:", f"{replicas} (maxReplicas)")
            result["replicas"] = replicas
    elif args.target_rps is not None:
        raise SystemExit("--target-rps needs --bench-result: one replica's measured goodput")
    print("=" * 60)
    return result
