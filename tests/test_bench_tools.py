"""The benchmark tools that cannot run in full here: the GPU acceptance script (its dry run and
its CUDA tests, collected and skipped without a GPU), the peer benchmark's harness and
checkpoints, and `minillm bench latency`, each on a tiny smoke workload."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from minillm.bench import latency, peers

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_acceptance_dry_run_lists_every_step_in_order():
    done = subprocess.run(["bash", "tools/gpu_acceptance.sh", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    steps = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert list(steps) == ["setup", "environment", "cuda-tests", "paged-decode", "checkpoint",
                           "throughput", "serve"]
    assert "-m 'cuda or kernels'" in steps["cuda-tests"] and "test_cuda.py" in steps["cuda-tests"]
    assert "tools/bench_paged_decode.py" in steps["paged-decode"]
    assert 'shaped_checkpoint("qwen2.5-0.5b"' in steps["checkpoint"]
    assert "bench throughput" in steps["throughput"] and "bench serve" in steps["serve"]
    limits = [int(steps[name].split("s", 1)[0]) for name in list(steps)[1:]]
    assert sum(limits) <= 8 * 60, f"step limits add up to {sum(limits)} s"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_gpu_acceptance_refuses_without_a_gpu():
    done = subprocess.run(["bash", "tools/gpu_acceptance.sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1 and "no NVIDIA GPU found" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: they run")
def test_cuda_tests_are_collected_and_skipped_without_a_gpu():
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_cuda.py", "-m", "cuda",
                           "-q", "-p", "no:cacheprovider", "-rs"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert "passed" not in summary and "failed" not in summary, summary
    assert int(summary.split(" skipped")[0].split()[-1]) >= 70, summary
    assert "needs an NVIDIA GPU" in done.stdout


def test_padded_tokenizer_covers_every_id():
    tokenizer = peers.padded_tokenizer(5000)
    assert len(tokenizer) == 5000
    assert tokenizer.decode([4999]) == "<|t4999|>"
    bundled = AutoTokenizer.from_pretrained(peers.bundled_model())
    text = "It is a truth universally acknowledged"
    assert tokenizer.encode(text) == bundled.encode(text)  # the bundled tokenizer, extended


def test_shaped_checkpoint_has_the_real_config(tmp_path):
    folder = peers.shaped_checkpoint("qwen2.5-0.5b", tmp_path / "qwen", num_layers=1)
    config = json.loads((folder / "config.json").read_text())
    expected = dict(peers.SHAPES["qwen2.5-0.5b"], num_hidden_layers=1)
    assert config["rope_parameters"]["rope_theta"] == expected.pop("rope_theta")  # moved there
    assert {k: config[k] for k in expected} == expected
    assert config["dtype"] == "bfloat16"
    assert peers.shaped_checkpoint("qwen2.5-0.5b", folder) == folder  # made once


def smoke_args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    peers.add_arguments(parser)
    args = parser.parse_args(["--workloads", "tiny-16", "--num-requests", "3", "--prompt-len",
                              "5-20", "--output-len", "2-4", "--rounds", "2", "--threads", "1",
                              "--engines", "minillm fp32", "transformers fp32"])
    return argparse.Namespace(**{**vars(args), **overrides})


def test_peers_harness_runs_each_engine_in_interleaved_rounds(capsys):
    (result,) = peers.main(smoke_args())
    assert result["requests"] == 3 and not result["errors"]
    assert {e: len(s) for e, s in result["speeds"].items()} == {"minillm fp32": 2,
                                                                 "transformers fp32": 2}
    out = capsys.readouterr().out
    rounds = [line.split(": ")[0] for line in out.splitlines() if " round " in line]
    assert rounds == ["[peers] tiny-16 round 1 minillm fp32", "[peers] tiny-16 round 1 "
                      "transformers fp32", "[peers] tiny-16 round 2 minillm fp32",
                      "[peers] tiny-16 round 2 transformers fp32"]
    assert "| tiny-16 | transformers fp32 | 16/32-bit |" in out


def test_a_failing_engine_is_reported_not_fatal(monkeypatch):
    spec_model = {}

    def broken_worker(python, spec):
        spec_model[spec["runtime"]] = spec["model"]
        return {"error": "boom"} if spec["runtime"] == "transformers" else {"tokens_per_s": 1.0}

    monkeypatch.setattr(peers, "run_worker", broken_worker)
    (result,) = peers.main(smoke_args(rounds=1))
    assert result["errors"] == {"transformers fp32": "boom"}
    assert result["speeds"]["minillm fp32"] == [1.0]
    assert spec_model["minillm"] == str(peers.bundled_model())


def test_report_divides_minillms_faster_setting_of_each_class_by_each_peer(capsys):
    """The ratio column: minillm's best median in the precision class (here bf16 over fp32) over
    the peer's median; minillm's own rows get none."""
    speeds = {"minillm fp32": [100.0], "minillm bf16": [150.0, 140.0, 160.0],
              "minillm int8": [80.0], "llama.cpp f16": [50.0], "llama.cpp q8_0": [40.0],
              "ctranslate2 fp32": [300.0]}
    result = dict(workload="tiny-16", speeds=speeds, errors={}, load_before=(0.5,),
                  load_after=(0.7,))
    info = dict(cpu="test CPU", cores=2, isa=["avx2"], load=(0.5,))
    peers.report([result], info, smoke_args(rounds=3))
    rows = {line.split(" | ")[1]: line.split(" | ")[-1].rstrip(" |")
            for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny-16")}
    assert rows["llama.cpp f16"] == "3.00" and rows["llama.cpp q8_0"] == "2.00", rows
    assert rows["ctranslate2 fp32"] == "0.50", rows
    assert {rows[e] for e in ("minillm fp32", "minillm bf16", "minillm int8")} == {"-"}, rows


def test_worker_checks_every_request_got_its_tokens():
    def short_by_one(prompts, lens):
        return [n - 1 for n in lens]
    with pytest.raises(RuntimeError, match="asked for"):
        peers.timed(short_by_one, [[1, 2]], [3])


def test_latency_reports_batch_one_and_step_overhead(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    latency.add_arguments(parser)
    out_json = tmp_path / "latency.json"
    args = parser.parse_args(["--engines", "minillm fp32", "--prompt-len", "8", "--output-len",
                              "4", "--overhead-steps", "4", "--threads", "1", "--output-json",
                              str(out_json)])
    report = latency.main(args)
    one = report["batch_one"]["minillm fp32"]
    assert one["ttft_ms"] > 0 and one["ms_per_token"] > 0
    overhead = report["step_overhead"]
    assert overhead["steps"] == 4 and overhead["bare_forward_ms"] > 0
    assert overhead["overhead_ms"] == pytest.approx(overhead["step_ms"]
                                                    - overhead["bare_forward_ms"])
    assert json.loads(out_json.read_text())["step_overhead"] == overhead
    assert "per-step overhead" in capsys.readouterr().out
