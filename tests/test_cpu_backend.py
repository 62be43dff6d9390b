"""The "cpu" attention backend: the compiled C decode kernel, the backend around it, the engine on
it, and how it is picked (or refused) where no compiler works.

What is proven here:

* `cpu_backend.paged_decode` computes softmax(q K^T * scale) V: it is compared with attention in
  float64, computed per sequence straight from the K/V the test generated (no cache, no block
  table, no torch backend). Ragged lengths (1, block-1, block, block+1, hundreds), shuffled
  physical blocks, GQA groups 1/2/4/8, head dims 32/64/128, block sizes 16/32, float32 and
  bfloat16 caches (the reference takes the bf16-rounded inputs).
* Everything in the cache that is not a valid position - the slots past a sequence's end in its
  last block, and every unused block - is poison (NaN, +-inf, huge values) and changes nothing:
  the output is bit-identical to the one over a zero-padded cache.
* The whole backend (store K/V, decodes through the kernel, prefill chunks with and without a
  cached prefix) gives what the torch backend gives, and leaves the same caches behind.
* The engine on attention_backend="cpu" generates token-for-token what it generates on "torch",
  through chunked prefill, block size 32, preemption and prefix-cache hits, and leaks no block.
* "auto" picks "cpu" where the kernel builds and "torch" where it does not, with one log line;
  an explicit "cpu" without a compiler raises `KernelUnavailable` saying why; float16 is refused;
  loading the kernel leaves the process's floating-point mode alone.
* Builds are cached under a key of source, compiler version, flags and CPU features: a build
  made for another CPU is not loaded. A compiler that fails is tried once per cache (a `.failed`
  file), not once per engine; one without OpenMP gives a single-threaded kernel and a log line;
  one without -march=native a portable one; a build that computes wrong values is not used;
  `MINILLM_DISABLE_CPU_KERNEL=1` switches the kernel off.
"""
from __future__ import annotations

import logging
import os
import platform
import random
import zlib
from pathlib import Path

import pytest
import torch
from attention_reference import causal_attention_float64
from checkpoints import prompts_of_lengths
from test_engine import assert_no_leaks

from minillm import LLM, SamplingParams
from minillm.attention import cpu_backend
from minillm.attention.base import AttentionMetadata, get_backend
from minillm.attention.cpu_backend import CpuAttentionBackend, KernelUnavailable
from minillm.attention.torch_backend import TorchAttentionBackend

# Relative error bound: max |out - ref| / max |ref|. A bf16 output alone is rounded by 2^-9.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
NAN = float("nan")
# Where no compiler exists, or the kernel is switched off, the kernel cannot be tested (and
# "auto" falls back: tested below).
needs_compiler = pytest.mark.skipif(
    cpu_backend.compiler() is None or os.environ.get(cpu_backend.DISABLE_VARIABLE) == "1",
    reason="no C compiler, or MINILLM_DISABLE_CPU_KERNEL=1")


def seed_for(*params) -> int:
    """A per-case seed derived from the case's parameters: fixed per case, different across."""
    return zlib.crc32(repr(params).encode())


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


class Batch:
    """Sequences of `seq_lens` tokens whose last `query_lens` tokens are this step's queries.

    Holds the ground truth (each sequence's K/V and the queries) and the paged layout: block
    tables over shuffled physical blocks (padded with 0, as the engine pads them), and caches
    holding the first `seq_len - query_len` tokens of each sequence (all of it when `stored`),
    every other slot filled with `padding` (None: random values, as a used cache holds).
    """

    def __init__(self, seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size,
                 dtype, seed, padding=NAN, stored=False, spare_blocks=3):
        gen = torch.Generator().manual_seed(seed)
        self.seq_lens, self.query_lens = list(seq_lens), list(query_lens)
        self.dtype, self.scale = dtype, head_dim ** -0.5

        def randn(*shape):
            return torch.randn(*shape, generator=gen).to(dtype)

        self.keys = [randn(n, num_kv_heads, head_dim) for n in seq_lens]
        self.values = [randn(n, num_kv_heads, head_dim) for n in seq_lens]
        self.q = randn(sum(query_lens), num_heads, head_dim)

        blocks_per_seq = [-(-n // block_size) for n in seq_lens]
        num_blocks = sum(blocks_per_seq) + spare_blocks
        physical = torch.randperm(num_blocks, generator=gen).tolist()
        self.block_tables = torch.zeros(len(seq_lens), max(blocks_per_seq) + 2, dtype=torch.int32)
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        if padding is None:
            self.k_cache, self.v_cache = randn(*shape), randn(*shape)
        else:
            self.k_cache = torch.full(shape, padding, dtype=dtype)
            self.v_cache = torch.full(shape, padding, dtype=dtype)

        self.slot_mapping = []  # the new tokens' slots, in query order
        flat_k = self.k_cache.view(-1, num_kv_heads, head_dim)
        flat_v = self.v_cache.view(-1, num_kv_heads, head_dim)
        for i, (n, q_len) in enumerate(zip(seq_lens, query_lens)):
            blocks = [physical.pop() for _ in range(blocks_per_seq[i])]
            self.block_tables[i, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
            slots = [blocks[p // block_size] * block_size + p % block_size for p in range(n)]
            cached = n if stored else n - q_len
            flat_k[slots[:cached]] = self.keys[i][:cached]
            flat_v[slots[:cached]] = self.values[i][:cached]
            self.slot_mapping += slots[n - q_len:]
        self.new_k = torch.cat([k[n - q:] for k, n, q in zip(self.keys, seq_lens, query_lens)])
        self.new_v = torch.cat([v[n - q:] for v, n, q in zip(self.values, seq_lens, query_lens)])

    def metadata(self) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=torch.tensor(self.slot_mapping, dtype=torch.int64),
            query_start_loc=torch.tensor([0] + self.query_lens).cumsum(0).to(torch.int32),
            seq_lens=torch.tensor(self.seq_lens, dtype=torch.int32),
            block_tables=self.block_tables, max_query_len=max(self.query_lens),
            max_seq_len=max(self.seq_lens))

    def reference(self) -> torch.Tensor:
        """Causal softmax attention in float64, one sequence at a time, from the ground truth."""
        return causal_attention_float64(self.q, self.keys, self.values, self.seq_lens,
                                        self.query_lens, self.scale)

    def check(self, out: torch.Tensor, tolerance: float | None = None) -> None:
        assert out.dtype == self.dtype and out.shape == self.q.shape
        assert out.isfinite().all(), "non-finite outputs: the padding leaked in"
        error = relative_error(out, self.reference())
        assert error <= (tolerance or TOLERANCE[self.dtype]), f"relative error {error:.2e}"


def decode_batch(num_heads, num_kv_heads, head_dim, block_size, dtype, seed, lens, padding=NAN):
    """One query per sequence, its K/V already in the cache (the engine stores, then attends)."""
    return Batch(lens, [1] * len(lens), num_heads, num_kv_heads, head_dim, block_size, dtype,
                 seed, padding=padding, stored=True)


def ragged_lens(block_size: int, seed: int) -> list[int]:
    """The block edges, a few hundred tokens, and random lengths, in a random order."""
    rng = random.Random(seed)
    lens = [1, block_size - 1, block_size, block_size + 1, 2 * block_size + 3, 300]
    lens += [rng.randint(1, 400) for _ in range(4)]
    rng.shuffle(lens)
    return lens


def kernel_decode(batch: Batch) -> torch.Tensor:
    return cpu_backend.paged_decode(batch.q, batch.k_cache, batch.v_cache, batch.block_tables,
                                    batch.metadata().seq_lens, batch.scale)


# ---------------------------------------------------------------------------------------------
# the kernel

# (num_heads, num_kv_heads, head_dim, block_size, dtype): GQA 1/2/4/8, five kernel builds.
DECODE_CASES = [
    (4, 4, 64, 16, torch.float32),
    (8, 4, 32, 32, torch.float32),
    (8, 2, 128, 16, torch.float32),
    (16, 2, 64, 16, torch.float32),
    (8, 1, 64, 16, torch.bfloat16),
    (4, 2, 128, 32, torch.bfloat16),
    (16, 4, 128, 32, torch.bfloat16),
    (8, 8, 32, 32, torch.float32),
]


@needs_compiler
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype", DECODE_CASES)
def test_paged_decode_matches_float64_reference(num_heads, num_kv_heads, head_dim, block_size,
                                                dtype):
    case = (num_heads, num_kv_heads, head_dim, block_size, dtype)
    batch = decode_batch(*case, seed_for("decode", *case), ragged_lens(block_size, seed_for(*case)))
    batch.check(kernel_decode(batch))


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padding", [NAN, float("inf"), float("-inf"), 3e38, -3e38])
def test_padding_never_reaches_the_output(padding, dtype):
    """Slots past each sequence's end and the spare blocks hold poison: the output is the same,
    bit for bit, as over a zero-padded cache (and matches the reference)."""
    case = (8, 2, 64, 16, dtype)
    lens = [1, 15, 16, 17, 33, 250]
    clean = decode_batch(*case, seed_for("padding", dtype), lens, padding=0.0)
    poisoned = decode_batch(*case, seed_for("padding", dtype), lens, padding=padding)
    assert torch.equal(clean.block_tables, poisoned.block_tables)
    out = kernel_decode(poisoned)
    poisoned.check(out)
    assert torch.equal(out, kernel_decode(clean))


@needs_compiler
def test_many_sequences_and_a_sharp_softmax():
    """48 sequences (more than threads: the parallel loop's scheduling), queries scaled so the
    scores span thousands (the online softmax's rescaling must not overflow or lose the max),
    a non-contiguous q and int64 tables and lengths."""
    rng = random.Random(7)
    lens = [rng.randint(1, 200) for _ in range(48)]
    batch = decode_batch(8, 2, 64, 16, torch.float32, seed_for("many"), lens)
    batch.q = batch.q * 40
    q_view = batch.q.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not q_view.is_contiguous()
    out = cpu_backend.paged_decode(q_view, batch.k_cache, batch.v_cache,
                                   batch.block_tables.long(), torch.tensor(lens), batch.scale)
    batch.check(out, tolerance=1e-4)  # scores of ~1e3 carry float32 rounding of ~1e-4


# ---------------------------------------------------------------------------------------------
# the backend: a mixed step against the torch backend

@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backend_forward_matches_torch_backend(dtype):
    """Decodes (lengths 1 .. 300), a prefill chunk with nothing cached before it, and chunks over
    a cached prefix (block-aligned and not), in one step; random values in unused slots."""
    seq_lens = [1, 23, 17, 70, 300, 48, 16]
    query_lens = [1, 23, 1, 13, 1, 16, 1]
    batch = Batch(seq_lens, query_lens, 8, 2, 64, 16, dtype, seed_for("forward", dtype),
                  padding=None)
    meta = batch.metadata()

    def run(backend):
        k_cache, v_cache = batch.k_cache.clone(), batch.v_cache.clone()
        out = backend.forward(batch.q, batch.new_k, batch.new_v, k_cache, v_cache, meta,
                              batch.scale)
        return out, k_cache, v_cache

    out, k_cache, v_cache = run(CpuAttentionBackend(64, 16, dtype))
    expected, k_expected, v_expected = run(TorchAttentionBackend())
    assert torch.equal(k_cache, k_expected) and torch.equal(v_cache, v_expected)
    slots = meta.slot_mapping
    assert torch.equal(k_cache.view(-1, 2, 64)[slots], batch.new_k)  # the new K/V were stored
    assert torch.equal(v_cache.view(-1, 2, 64)[slots], batch.new_v)
    batch.check(out)  # the truth, in float64
    batch.check(expected)
    assert relative_error(out, expected.double()) <= TOLERANCE[dtype]


# ---------------------------------------------------------------------------------------------
# the engine

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def greedy(llm: LLM, batch: list[list[int]]) -> list[list[int]]:
    outputs = llm.generate([{"prompt_token_ids": p} for p in batch], GREEDY, use_tqdm=False)
    assert_no_leaks(llm)
    return [o.outputs[0].token_ids for o in outputs]


PROMPTS = prompts_of_lengths(1, [1, 15, 16, 17, 40, 70, 130])


@pytest.fixture(scope="module")
def torch_tokens(gqa_model_path) -> list[list[int]]:
    """The torch backend's tokens (test_engine proves them the same under every setting)."""
    return greedy(LLM(gqa_model_path, attention_backend="torch"), PROMPTS)


ENGINE_SETTINGS = {
    "default": {},
    "chunked-prefill": dict(max_num_batched_tokens=13),
    "chunked-block-32": dict(max_num_batched_tokens=13, block_size=32),
    "preempt": dict(num_gpu_blocks_override=10, max_model_len=160),
}


@needs_compiler
@pytest.mark.parametrize("setting", sorted(ENGINE_SETTINGS))
def test_engine_on_cpu_backend_generates_what_torch_generates(gqa_model_path, torch_tokens, setting):
    llm = LLM(gqa_model_path, attention_backend="cpu", **ENGINE_SETTINGS[setting])
    assert llm.engine.backend.name == "cpu"
    assert greedy(llm, PROMPTS) == torch_tokens
    if setting == "preempt":
        assert llm.engine.stats.num_preemptions > 0


@needs_compiler
def test_engine_on_cpu_backend_with_prefix_cache_hits(gqa_model_path):
    shared = prompts_of_lengths(2, [40])[0]  # 40 tokens: two full 16-token blocks to reuse
    batch = prompts_of_lengths(3, [3, 20, 9, 1], prefix=shared)
    reference = LLM(gqa_model_path, attention_backend="torch")
    expected = greedy(reference, batch[:1]) + greedy(reference, batch[1:])

    llm = LLM(gqa_model_path, attention_backend="cpu", max_num_batched_tokens=16)
    assert greedy(llm, batch[:1]) == expected[:1]  # fills the cache
    assert greedy(llm, batch[1:]) == expected[1:]  # hits it, prefills only the tails (chunked)
    assert llm.engine.stats.prefix_cache_hits >= 3 * 32


@needs_compiler
def test_engine_picks_cpu_backend_by_default_on_cpu(llama_checkpoint):
    llm = LLM(str(llama_checkpoint), device="cpu")
    assert llm.engine.backend.name == "cpu"
    assert greedy(llm, PROMPTS[:2]) == greedy(
        LLM(str(llama_checkpoint), attention_backend="torch"), PROMPTS[:2])


# ---------------------------------------------------------------------------------------------
# selection, errors, the build cache

@pytest.fixture
def kernel_cache(monkeypatch, tmp_path):
    """An empty build cache, the kernel switched on, and nothing remembered in this process,
    before and after."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINILLM_CACHE", str(cache))
    monkeypatch.delenv(cpu_backend.DISABLE_VARIABLE, raising=False)
    forget_builds()
    yield cache
    forget_builds()


# What the process remembers (taken now: a test may monkeypatch one of them).
MEMOS = (cpu_backend._kernel_or_why_not, cpu_backend.compiler_identity, cpu_backend.cpu_isa)


def forget_builds():
    """What a new process knows: only the files in the build cache."""
    for memo in MEMOS:
        memo.cache_clear()


def files(cache, pattern: str) -> list:
    return sorted(cache.glob(pattern))


def fake_compiler(tmp_path, name: str, script: str) -> str:
    """A shell script standing in for the C compiler: it logs its arguments, one line per call,
    then runs `script`, in which `$REAL` is this machine's compiler."""
    path = tmp_path / name
    log = tmp_path / f"{name}.log"
    path.write_text(f'#!/bin/sh\nREAL="{cpu_backend.compiler()}"\necho "$*" >> {log}\n{script}\n')
    path.chmod(0o755)
    return str(path)


def calls(compiler_path: str) -> list[str]:
    log = Path(compiler_path + ".log")
    return log.read_text().splitlines() if log.exists() else []


def minillm_log(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "minillm"]


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_picks_cpu_backend_where_the_kernel_builds(dtype):
    backend = get_backend("auto", "cpu", dtype=dtype, head_dim=64, block_size=16)
    assert isinstance(backend, CpuAttentionBackend) and backend.name == "cpu"


def test_auto_picks_torch_for_float16_and_explicit_cpu_refuses_it():
    backend = get_backend("auto", "cpu", dtype=torch.float16, head_dim=64, block_size=16)
    assert type(backend) is TorchAttentionBackend  # the cpu backend is a subclass: exact type
    with pytest.raises(ValueError, match="float32 and bfloat16"):
        get_backend("cpu", "cpu", dtype=torch.float16, head_dim=64, block_size=16)


def test_a_compiler_that_does_not_run_falls_back_and_cpu_says_why(kernel_cache, monkeypatch,
                                                                   tmp_path, caplog):
    missing = str(tmp_path / "no-such-cc")
    monkeypatch.setenv("CC", missing)
    with caplog.at_level(logging.INFO, logger="minillm"):
        backend = get_backend("auto", "cpu", dtype=torch.float32, head_dim=64, block_size=16)
    assert type(backend) is TorchAttentionBackend and backend.name == "torch"
    [line] = minillm_log(caplog)
    assert "not the CPU kernel" in line and missing in line
    with pytest.raises(KernelUnavailable, match="does not run") as err:
        get_backend("cpu", "cpu", dtype=torch.float32, head_dim=64, block_size=16)
    assert missing in str(err.value)  # names what it tried to run
    assert not files(kernel_cache, "*.so"), "a failed build left a library behind"


def test_without_any_compiler_cpu_says_to_install_one(kernel_cache, monkeypatch, tmp_path):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no cc, gcc or clang
    with pytest.raises(KernelUnavailable, match="no C compiler found"):
        CpuAttentionBackend(64, 16, torch.float32)
    assert type(get_backend("auto", "cpu", head_dim=64, block_size=16)) is TorchAttentionBackend


def test_a_failing_compiler_is_tried_once_per_cache_not_per_engine(kernel_cache, monkeypatch,
                                                                    tmp_path, caplog):
    """A compiler that fails every build (as /bin/false does): "auto" falls back with one log
    line; each flag set is tried once, and its failure is remembered - in the process, and in a
    `.failed` file that a later process reads instead of compiling again."""
    cc = fake_compiler(tmp_path, "failing-cc", "echo 'cc: internal error' >&2; exit 1")
    monkeypatch.setenv("CC", cc)
    with caplog.at_level(logging.INFO, logger="minillm"):
        assert not cpu_backend.available(64, 16, torch.float32)
    [line] = minillm_log(caplog)
    assert cc in line and "cc: internal error" in line
    compiles = [c for c in calls(cc) if " -c " in c]
    assert len(compiles) == len(cpu_backend.FLAG_SETS)
    assert len(files(kernel_cache, "*.failed")) == len(cpu_backend.FLAG_SETS)
    assert not files(kernel_cache, "*.so")

    called = len(calls(cc))
    assert not cpu_backend.available(64, 16, torch.float32)  # the same process: no call at all
    assert len(calls(cc)) == called
    forget_builds()  # a new process: asks the compiler's version, compiles nothing
    with pytest.raises(KernelUnavailable, match="failed before: cc: internal error"):
        cpu_backend.load_kernel(64, 16, torch.float32)
    assert calls(cc)[called:] == ["--version"]


@needs_compiler
def test_a_compiler_without_openmp_builds_single_threaded_and_says_so(kernel_cache, monkeypatch,
                                                                     tmp_path, caplog):
    """Apple's clang refuses -fopenmp: the kernel is built without it (one thread), with a log
    line, and computes the same attention."""
    cc = fake_compiler(tmp_path, "clang-without-openmp", """
case " $* " in *" -fopenmp "*) echo "clang: error: unsupported option '-fopenmp'" >&2; exit 1;; esac
exec "$REAL" "$@"
""")
    monkeypatch.setenv("CC", cc)
    with caplog.at_level(logging.INFO, logger="minillm"):
        assert cpu_backend.available(64, 16, torch.float32)
    [line] = minillm_log(caplog)
    assert "without OpenMP" in line and "one thread" in line
    assert len(files(kernel_cache, "*.failed")) == 2 and len(files(kernel_cache, "*.so")) == 1
    assert "-fopenmp" not in [c for c in calls(cc) if " -c " in c][-1]  # the build it kept
    batch = decode_batch(8, 2, 64, 16, torch.float32, seed_for("no-openmp"), ragged_lens(16, 5))
    batch.check(kernel_decode(batch))


@needs_compiler
def test_a_compiler_without_march_native_builds_portable(kernel_cache, monkeypatch, tmp_path,
                                                         caplog):
    cc = fake_compiler(tmp_path, "cc-without-native", """
case " $* " in *" -march=native "*) echo "error: unknown target CPU 'native'" >&2; exit 1;; esac
exec "$REAL" "$@"
""")
    monkeypatch.setenv("CC", cc)
    with caplog.at_level(logging.INFO, logger="minillm"):
        assert cpu_backend.available(64, 16, torch.bfloat16)
    assert minillm_log(caplog) == []  # with OpenMP: nothing to report
    assert len(files(kernel_cache, "*.failed")) == 1 and len(files(kernel_cache, "*.so")) == 1
    batch = decode_batch(8, 2, 64, 16, torch.bfloat16, seed_for("portable"), ragged_lens(16, 6))
    batch.check(kernel_decode(batch))


@needs_compiler
def test_a_build_that_computes_wrong_results_is_not_used(kernel_cache, monkeypatch, tmp_path):
    """Each build is checked on a small decode against the torch backend. A compiler that builds
    something else (here: exp2 where the source says exp) fails the check for every flag set."""
    cc = fake_compiler(tmp_path, "miscompiling-cc", 'exec "$REAL" "$@" -Dexpf=exp2f')
    monkeypatch.setenv("CC", cc)
    assert type(get_backend("auto", "cpu", head_dim=64, block_size=16)) is TorchAttentionBackend
    with pytest.raises(KernelUnavailable, match="wrong result: relative error") as err:
        CpuAttentionBackend(64, 16, torch.float32)
    assert str(err.value).count("wrong result") == len(cpu_backend.FLAG_SETS) + 1  # + summary
    assert len(files(kernel_cache, "*.failed")) == len(cpu_backend.FLAG_SETS)


def test_the_build_key_covers_source_compiler_flags_and_cpu(monkeypatch):
    monkeypatch.setattr(cpu_backend, "compiler_identity", lambda cc: "gcc 12.2.0")
    monkeypatch.setattr(cpu_backend, "cpu_isa", lambda: "sse avx2")
    key = cpu_backend.build_key("cc", ["-O3"])
    assert cpu_backend.build_key("cc", ["-O3"]) == key
    assert cpu_backend.build_key("clang", ["-O3"]) != key
    assert cpu_backend.build_key("cc", ["-O2"]) != key
    monkeypatch.setattr(cpu_backend, "compiler_identity", lambda cc: "gcc 13.1.0")
    assert cpu_backend.build_key("cc", ["-O3"]) != key
    monkeypatch.setattr(cpu_backend, "compiler_identity", lambda cc: "gcc 12.2.0")
    monkeypatch.setattr(cpu_backend, "cpu_isa", lambda: "sse avx2 avx512f")
    assert cpu_backend.build_key("cc", ["-O3"]) != key
    monkeypatch.setattr(cpu_backend, "SOURCE", Path(__file__))
    monkeypatch.setattr(cpu_backend, "cpu_isa", lambda: "sse avx2")
    assert cpu_backend.build_key("cc", ["-O3"]) != key


@needs_compiler
def test_a_build_for_another_cpu_in_a_shared_cache_is_not_loaded(kernel_cache, monkeypatch):
    """A home folder shared by machines with different CPUs: the -march=native build made on one
    is never loaded on the other (it could stop on an instruction this CPU lacks)."""
    cpu_backend.load_kernel(64, 16, torch.float32)
    [theirs] = files(kernel_cache, "*.so")
    forget_builds()
    monkeypatch.setattr(cpu_backend, "cpu_isa", lambda: "fpu sse sse2")  # another machine
    cpu_backend.load_kernel(64, 16, torch.float32)
    assert len(files(kernel_cache, "*.so")) == 2  # built its own


def test_the_cpu_isa_is_this_machines_feature_flags():
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    flags = [line.partition(":")[2].strip() for line in lines
             if line.startswith(("flags", "Features"))]
    assert cpu_backend.cpu_isa() == (flags[0] if flags else platform.processor())


def test_the_disable_variable_switches_the_kernel_off_with_one_log_line(kernel_cache,
                                                                        monkeypatch, caplog):
    monkeypatch.setenv(cpu_backend.DISABLE_VARIABLE, "1")
    with caplog.at_level(logging.INFO, logger="minillm"):
        assert not cpu_backend.available(64, 16, torch.float32)
        backend = get_backend("auto", "cpu", dtype=torch.bfloat16, head_dim=64, block_size=16)
    assert type(backend) is TorchAttentionBackend
    assert minillm_log(caplog) == [
        "attention: the torch backend, not the CPU kernel (MINILLM_DISABLE_CPU_KERNEL=1)"] * 2
    with pytest.raises(KernelUnavailable, match="MINILLM_DISABLE_CPU_KERNEL=1"):
        get_backend("cpu", "cpu", dtype=torch.float32, head_dim=64, block_size=16)
    assert not list(kernel_cache.glob("*")), "built something while switched off"


@needs_compiler
def test_a_build_is_cached_per_constants(kernel_cache):
    first = cpu_backend.load_kernel(64, 16, torch.float32)
    assert cpu_backend.load_kernel(64, 16, torch.float32) is first  # memoised in the process
    built = {p: p.stat().st_mtime_ns for p in kernel_cache.iterdir()}
    assert len(built) == 1

    forget_builds()  # as a new process would: only the file remains
    cpu_backend.load_kernel(64, 16, torch.float32)
    assert {p: p.stat().st_mtime_ns for p in kernel_cache.iterdir()} == built

    cpu_backend.load_kernel(64, 32, torch.float32)  # other constants: another build
    assert len(list(kernel_cache.iterdir())) == 2


@needs_compiler
def test_loading_the_kernel_keeps_subnormal_floats():
    """The kernel is loaded into the caller's process: it must not switch the process's
    floating-point mode (e.g. flush-to-zero, which `-ffast-math` links in with GCC < 13)."""
    cpu_backend.load_kernel(64, 16, torch.float32)
    tiny = torch.tensor([1e-38], dtype=torch.float32)
    assert (tiny / 1000).item() > 0, "subnormal results flushed to zero after loading the kernel"


@pytest.mark.parametrize("skip_share", [0.0, 0.25], ids=["every-slot", "some-minus-one"])
def test_torch_store_kv_writes_each_slot_and_skips_minus_one(skip_share):
    """The torch backend's cache write: each token's K/V in its slot, nothing for a slot of -1
    (the selection runs only when there is one), every other slot untouched."""
    from minillm.attention.torch_backend import store_kv

    gen = torch.Generator().manual_seed(int(skip_share * 100))
    num_blocks, block_size, kv_heads, dim, tokens = 5, 4, 2, 8, 12
    k_cache, v_cache = (torch.randn(num_blocks, block_size, kv_heads, dim, generator=gen)
                        for _ in range(2))
    k, v = (torch.randn(tokens, kv_heads, dim, generator=gen) for _ in range(2))
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    skipped = torch.rand(tokens, generator=gen) < skip_share
    slots[skipped] = -1
    expected_k, expected_v = (c.view(-1, kv_heads, dim).clone() for c in (k_cache, v_cache))
    expected_k[slots[~skipped]], expected_v[slots[~skipped]] = k[~skipped], v[~skipped]
    store_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache.view(-1, kv_heads, dim), expected_k), slots
    assert torch.equal(v_cache.view(-1, kv_heads, dim), expected_v), slots
