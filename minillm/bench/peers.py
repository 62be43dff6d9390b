"""`minillm bench peers`: minillm against the engines a CPU user would pick instead.

Every engine gets the same token ids, greedy, `ignore_eos` (each request generates exactly its
output length), the same thread count, in interleaved rounds (A, B, C, A, B, C, ...), each run
in its own process; tokens/s counts only the tokens the requests asked for.

    engine              how it batches                               venv
    minillm fp32/int8   continuous batching (LLM.generate)           the project's
    transformers fp32   static, left-padded batches of --batch-size  the project's
    ctranslate2 fp32/int8  static batches (Generator.generate_batch) ~/.cache/minillm/peers/ctranslate2
    llama.cpp f16/q8_0  continuous: --parallel sequences through     ~/.cache/minillm/peers/llama-cpp
                        llama_decode's multi-sequence batches

A peer's virtualenv is made on first use, outside the repository, so its dependencies never
touch .venv; a .pth file lends it the project's torch and transformers read-only (the
converters need them). CTranslate2 models come from its converter (`ct2-transformers-converter`,
int8 quantized at load); GGUF files from the `convert_hf_to_gguf.py` in llama-cpp-python's
source distribution, which pip builds from source (many minutes of C++).

Workloads (`--workloads`): the bundled model at 16, 64 and 256 requests; random-weight
checkpoints with the exact configs of Qwen2.5-0.5B and Llama-3.2-1B at 16 and 64 requests,
made once with transformers from the config (no download) and cached. Prompts 16-256 tokens,
outputs 64-256. The report gives min/median/max output tokens/s per engine, the ratio of
minillm's median (its faster setting of the class: float32 or bfloat16; int8) to each peer's
in the same precision class, the CPU's ISA and the load.

This file is also the worker each engine runs in its own process (`python peers.py run
SPEC.json`), so it imports nothing but the standard library at the top.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

CACHE = Path(os.environ.get("MINILLM_CACHE", Path.home() / ".cache" / "minillm"))
PEERS = CACHE / "peers"

# Exact configs of real models (their config.json), for random-weight checkpoints of that shape.
SHAPES = {
    "qwen2.5-0.5b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896,
        intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, vocab_size=151936, hidden_act="silu",
        use_sliding_window=False, max_window_layers=24),
    "llama-3.2-1b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048,
        intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=True, vocab_size=128256, hidden_act="silu",
        rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
}

# name -> (model: "bundled" or a SHAPES key, number of requests)
WORKLOADS = {
    "tiny-16": ("bundled", 16), "tiny-64": ("bundled", 64), "tiny-256": ("bundled", 256),
    "qwen2.5-0.5b-16": ("qwen2.5-0.5b", 16), "qwen2.5-0.5b-64": ("qwen2.5-0.5b", 64),
    "llama-3.2-1b-16": ("llama-3.2-1b", 16), "llama-3.2-1b-64": ("llama-3.2-1b", 64),
}

# name -> (runtime, precision setting, precision class)
ENGINES = {
    "minillm fp32": ("minillm", "float32", "16/32-bit"),
    "minillm bf16": ("minillm", "bfloat16", "16/32-bit"),
    "minillm int8": ("minillm", "int8", "8-bit"),
    "transformers fp32": ("transformers", "float32", "16/32-bit"),
    "ctranslate2 fp32": ("ctranslate2", "float32", "16/32-bit"),
    "ctranslate2 int8": ("ctranslate2", "int8", "8-bit"),
    "llama.cpp f16": ("llama-cpp", "f16", "16/32-bit"),
    "llama.cpp q8_0": ("llama-cpp", "q8_0", "8-bit"),
}
# llama-cpp-python itself is built from its sdist; its GGUF converter imports sentencepiece.
PIP_PACKAGES = {"ctranslate2": ["ctranslate2"], "llama-cpp": ["sentencepiece"]}
LLAMA_CPP_VERSION = "0.3.36"  # the worker's C API calls and the GGUF converter's layout


# -- checkpoints --------------------------------------------------------------------------------
def bundled_model() -> Path:
    from minillm.assets import DEFAULT_MODEL
    return DEFAULT_MODEL


def shaped_checkpoint(name: str, folder: str | Path | None = None,
                      num_layers: int | None = None) -> Path:
    """A random-weight checkpoint with the exact config of `name` (a SHAPES key), in bfloat16
    as those models ship, made once with transformers (no download). Its tokenizer is the
    bundled model's, its vocabulary padded with placeholder tokens to the config's size, so
    every id decodes."""
    config = dict(SHAPES[name], num_hidden_layers=num_layers or SHAPES[name]["num_hidden_layers"])
    folder = Path(folder or CACHE / "checkpoints" / (name + (f"-{num_layers}l" if num_layers else "")))
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    import transformers

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = padded_tokenizer(config["vocab_size"])
    tokenizer.save_pretrained(partial)
    config_class = transformers.AutoConfig.for_model(config.pop("model_type")).__class__
    hf_config = config_class(**config, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    model.save_pretrained(partial)
    partial.rename(folder)
    return folder


def padded_tokenizer(vocab_size: int):
    """The bundled byte-level BPE tokenizer with placeholder tokens `<|tN|>` up to vocab_size."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads((bundled_model() / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    assert max(vocab.values()) == len(vocab) - 1, "the bundled vocabulary has gaps"
    vocab.update({f"<|t{i}|>": i for i in range(len(vocab), vocab_size)})
    special = json.loads((bundled_model() / "special_tokens_map.json").read_text())
    names = {k: v["content"] if isinstance(v, dict) else v for k, v in special.items()}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), **names)


def model_folder(model: str) -> Path:
    return bundled_model() if model == "bundled" else shaped_checkpoint(model)


# -- workloads ----------------------------------------------------------------------------------
def make_requests(num: int, vocab_size: int, prompt_lens: tuple[int, int],
                  output_lens: tuple[int, int], seed: int) -> tuple[list[list[int]], list[int]]:
    import random

    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab_size) for _ in range(rng.randint(*prompt_lens))]
               for _ in range(num)]
    return prompts, [rng.randint(*output_lens) for _ in range(num)]


# -- peer virtualenvs and converted models ------------------------------------------------------
def peer_python(runtime: str) -> Path:
    """The interpreter for `runtime`: the project's for minillm and transformers; else a venv
    of its own under ~/.cache/minillm/peers, made on first use."""
    if runtime in ("minillm", "transformers"):
        return Path(sys.executable)
    venv = PEERS / runtime
    python = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return python
    print(f"[peers] making {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    project_site = [p for p in sys.path if p.endswith("site-packages")]
    Path(site.stdout.strip(), "minillm-project.pth").write_text("\n".join(project_site) + "\n")
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if runtime == "llama-cpp":
        source = llama_cpp_source()
        env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get(
            "CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count())))
        print(f"[peers] building llama-cpp-python from {source} (many minutes)", flush=True)
        subprocess.run(pip + ["--verbose", str(source)], check=True, env=env)
    subprocess.run(pip + PIP_PACKAGES[runtime], check=True)
    (venv / ".installed").touch()
    return python


def llama_cpp_source() -> Path:
    """llama-cpp-python's source distribution, unpacked: the package and convert_hf_to_gguf.py."""
    root = PEERS / "src"
    found = sorted(root.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if not found:
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", "-d", str(root),
                        f"llama-cpp-python=={LLAMA_CPP_VERSION}"], check=True)
        archive = sorted(root.glob("llama_cpp_python-*.tar.gz"))[-1]
        shutil.unpack_archive(archive, root)
        found = sorted(root.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    return found[-1].parents[2]


# convert_hf_to_gguf.py names a BPE tokenizer's pre-tokenizer by hashing how it splits a test
# text and refuses ones it does not know; the ids are all that is benchmarked, so call it GPT-2.
GGUF_CONVERT = """
import sys
sys.argv = sys.argv[1:]
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])
import convert_hf_to_gguf as convert
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
convert.main()
"""


def converted_model(runtime: str, precision: str, folder: Path, python: Path) -> Path:
    """The model in the peer's own format, converted once into the cache."""
    out = PEERS / "models" / f"{folder.name}-{zlib.crc32(str(folder.resolve()).encode()):08x}"
    if runtime in ("minillm", "transformers"):
        return folder
    if runtime == "ctranslate2":  # one float32 model; int8 is quantized at load
        target = out / "ctranslate2"
        if not (target / "model.bin").exists():
            subprocess.run([str(python.parent / "ct2-transformers-converter"), "--model",
                            str(folder), "--output_dir", str(target), "--force"], check=True)
        return target
    target = out / f"model-{precision}.gguf"
    if not target.exists():
        script = llama_cpp_source() / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        # Away from the repository: `python -c` puts the working directory first on sys.path,
        # and this repository's kernels/ would shadow the `kernels` package transformers imports.
        subprocess.run([str(python), "-c", GGUF_CONVERT, str(script), str(folder.resolve()),
                        "--outfile", str(target), "--outtype", precision], check=True,
                       cwd=target.parent)
    return target


# -- the orchestrator ---------------------------------------------------------------------------
def cpu_info() -> dict:
    flags, name = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni",
                       "amx_bf16", "amx_int8") if f in flags]
    return {"cpu": name, "isa": isa, "cores": os.cpu_count(), "load": os.getloadavg()}


def run_worker(python: Path, spec: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        done = subprocess.run([str(python), __file__, "run", f.name], capture_output=True,
                              text=True, env=dict(os.environ, OMP_NUM_THREADS=str(spec["threads"])))
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_workload(name: str, args: argparse.Namespace) -> dict:
    model, num = WORKLOADS[name]
    num = args.num_requests or num
    folder = model_folder(model)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    prompts, outputs = make_requests(num, vocab, args.prompt_len, args.output_len, args.seed)
    engines = {}
    for engine in args.engines:
        runtime, precision, _ = ENGINES[engine]
        try:
            python = peer_python(runtime)
            engines[engine] = dict(runtime=runtime, precision=precision, python=python,
                                   model=str(converted_model(runtime, precision, folder, python)))
        except (subprocess.CalledProcessError, OSError) as e:
            print(f"[peers] {engine}: unavailable ({e})", flush=True)
    speeds: dict[str, list[float]] = {e: [] for e in engines}
    errors: dict[str, str] = {}
    load_before = os.getloadavg()
    for round_ in range(args.rounds):
        for engine, setup in engines.items():  # interleaved: every engine once per round
            if engine in errors:
                continue
            spec = dict(mode=args.mode, prompts=prompts, output_lens=outputs,
                        threads=args.threads, batch_size=args.batch_size,
                        parallel=min(args.parallel, num), seed=args.seed,
                        **{k: setup[k] for k in ("runtime", "precision", "model")})
            result = run_worker(setup["python"], spec)
            if "error" in result:
                errors[engine] = result["error"]
                print(f"[peers] {name} {engine}: {result['error']}", flush=True)
                continue
            speeds[engine].append(result["tokens_per_s"])
            print(f"[peers] {name} round {round_ + 1} {engine}: "
                  f"{result['tokens_per_s']:.1f} tok/s", flush=True)
    return dict(workload=name, model=str(folder), requests=num, output_tokens=sum(outputs),
                speeds=speeds, errors=errors, load_before=load_before,
                load_after=os.getloadavg())


def report(results: list[dict], info: dict, args: argparse.Namespace) -> None:
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, ISA {' '.join(info['isa'])}; "
          f"{args.threads} thread(s) per engine; load average at start "
          f"{info['load'][0]:.2f}")
    print(f"prompts {args.prompt_len[0]}-{args.prompt_len[1]} tokens, outputs "
          f"{args.output_len[0]}-{args.output_len[1]}, greedy, ignore_eos, {args.rounds} "
          f"interleaved round(s)\n")
    print("| workload | engine | class | output tok/s min / median / max | minillm ÷ engine |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        medians = {e: statistics.median(s) for e, s in r["speeds"].items() if s}
        for engine, s in r["speeds"].items():
            cls = ENGINES[engine][2]
            if not s:
                print(f"| {r['workload']} | {engine} | {cls} | {r['errors'].get(engine, '-')} | |")
                continue
            own = max((medians[e] for e in medians  # minillm's best setting in the class
                       if ENGINES[e][0] == "minillm" and ENGINES[e][2] == cls), default=None)
            peer = ENGINES[engine][0] != "minillm"
            ratio = f"{own / medians[engine]:.2f}" if own and peer else "-"
            print(f"| {r['workload']} | {engine} | {cls} | {min(s):.1f} / {medians[engine]:.1f}"
                  f" / {max(s):.1f} | {ratio} |")
        print(f"| {r['workload']} | load average before / after | | "
              f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} | |")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def span(text: str) -> tuple[int, int]:
        low, _, high = text.partition("-")
        return int(low), int(high or low)

    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--num-requests", type=int, default=None,
                        help="override every workload's request count (a smoke run)")
    parser.add_argument("--prompt-len", type=span, default=(16, 256), metavar="MIN-MAX")
    parser.add_argument("--output-len", type=span, default=(64, 256), metavar="MIN-MAX")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads for every engine (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="static batch size of transformers and CTranslate2")
    parser.add_argument("--parallel", type=int, default=64,
                        help="llama.cpp's parallel sequences (its n_seq_max)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-json", default=None)
    parser.set_defaults(mode="throughput")


def main(args: argparse.Namespace) -> list[dict]:
    info = cpu_info()
    results = [run_workload(name, args) for name in args.workloads]
    report(results, info, args)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(dict(machine=info, results=results), indent=2))
    return results


# -- the worker: one engine, one process --------------------------------------------------------
def worker(spec: dict) -> dict:
    """Run the spec's requests through one engine; time only the generation (after a warm-up).
    mode "throughput": all requests; mode "latency": the first request alone, TTFT as the time
    of a 1-token generate and ms/token from the rest."""
    generate = RUNTIMES[spec["runtime"]](spec)
    prompts, lens = spec["prompts"], spec["output_lens"]
    generate(prompts[:2], [4, 4])  # warm-up
    if spec["mode"] == "latency":
        n = lens[0]
        first = min(timed(generate, prompts[:1], [1]) for _ in range(3))
        whole = min(timed(generate, prompts[:1], [n]) for _ in range(3))
        return dict(ttft_ms=1000 * first, ms_per_token=1000 * (whole - first) / (n - 1))
    seconds = timed(generate, prompts, lens)
    return dict(seconds=seconds, tokens_per_s=sum(lens) / seconds)


def timed(generate, prompts, lens) -> float:
    start = time.perf_counter()
    produced = generate(prompts, lens)
    seconds = time.perf_counter() - start
    if produced != list(lens):
        raise RuntimeError(f"asked for {lens[:8]}... tokens, got {produced[:8]}...")
    return seconds


def minillm_runtime(spec):
    import torch

    from minillm import LLM, SamplingParams

    torch.set_num_threads(spec["threads"])
    options = ({"quantization": "int8", "dtype": "float32"} if spec["precision"] == "int8"
               else {"dtype": spec["precision"]})
    llm = LLM(spec["model"], max_num_seqs=max(256, len(spec["prompts"])), seed=spec["seed"],
              **options)

    def generate(prompts, lens):
        params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in lens]
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                               use_tqdm=False)
        return [len(o.outputs[0].token_ids) for o in outputs]
    return generate


def transformers_runtime(spec):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(spec["threads"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).eval()

    @torch.inference_mode()
    def generate(prompts, lens):
        produced = []
        for i in range(0, len(prompts), spec["batch_size"]):
            batch, want = prompts[i:i + spec["batch_size"]], lens[i:i + spec["batch_size"]]
            width, longest = max(map(len, batch)), max(want)
            ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            out = model.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=0,
                                 max_new_tokens=longest, min_new_tokens=longest)
            produced += [min(n, out.shape[1] - width) for n in want]
        return produced
    return generate


def ctranslate2_runtime(spec):
    import ctranslate2

    generator = ctranslate2.Generator(spec["model"], device="cpu", compute_type=spec["precision"],
                                      intra_threads=spec["threads"], inter_threads=1)
    vocabulary = json.loads(Path(spec["model"], "vocabulary.json").read_text())  # id -> token

    def generate(prompts, lens):
        produced = []
        for i in range(0, len(prompts), spec["batch_size"]):
            batch, want = prompts[i:i + spec["batch_size"]], lens[i:i + spec["batch_size"]]
            tokens = [[vocabulary[t] for t in p] for p in batch]
            longest = max(want)
            results = generator.generate_batch(tokens, max_length=longest, min_length=longest,
                                               sampling_topk=1, include_prompt_in_result=False)
            produced += [min(n, len(r.sequences_ids[0])) for n, r in zip(want, results)]
        return produced
    return generate


def llama_cpp_runtime(spec):
    """Continuous batching through llama.cpp's C API: up to `parallel` sequences share each
    llama_decode; a finished sequence's KV is dropped and the next request takes its slot."""
    import llama_cpp as L
    import numpy as np

    L.llama_backend_init()
    model = L.llama_model_load_from_file(spec["model"].encode(), L.llama_model_default_params())
    parallel = spec["parallel"]
    longest = max(len(p) for p in spec["prompts"]) + max(spec["output_lens"]) + 8
    n_batch = max(2048, longest + parallel)
    params = L.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = parallel * longest, n_batch, 512
    params.n_seq_max, params.kv_unified = parallel, False
    params.n_threads = params.n_threads_batch = spec["threads"]
    ctx = L.llama_init_from_model(model, params)
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    memory = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(n_batch, 0, 1)

    def add(token, pos, seq, logits):
        i = batch.n_tokens
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens += 1

    def generate(prompts, lens):
        waiting, running = list(range(len(prompts)))[::-1], {}  # slot -> [request, pos, last]
        produced, free = [0] * len(prompts), list(range(parallel))
        while waiting or running:
            batch.n_tokens, rows = 0, []
            for slot, state in running.items():  # [request, next position, last token]
                rows.append((slot, batch.n_tokens))
                add(state[2], state[1], slot, True)
                state[1] += 1
            while waiting and free and batch.n_tokens + len(prompts[waiting[-1]]) <= n_batch:
                req, slot = waiting.pop(), free.pop()
                for pos, token in enumerate(prompts[req]):
                    add(token, pos, slot, pos == len(prompts[req]) - 1)
                running[slot] = [req, len(prompts[req]), None]
                rows.append((slot, batch.n_tokens - 1))
            if L.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            for slot, row in rows:
                logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, row), (n_vocab,))
                state = running[slot]
                state[2] = int(logits.argmax())
                produced[state[0]] += 1
                if produced[state[0]] == lens[state[0]]:
                    L.llama_memory_seq_rm(memory, slot, -1, -1)
                    del running[slot]
                    free.append(slot)
        return produced
    return generate


RUNTIMES = {"minillm": minillm_runtime, "transformers": transformers_runtime,
            "ctranslate2": ctranslate2_runtime, "llama-cpp": llama_cpp_runtime}


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        print(json.dumps(worker(json.loads(Path(sys.argv[2]).read_text()))))
    else:
        parser = argparse.ArgumentParser(prog="python -m minillm.bench.peers",
                                         description=__doc__.split("\n\n")[0])
        add_arguments(parser)
        main(parser.parse_args())
