"""`minillm plan` against numbers worked out by hand (and Meta's published parameter count)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from minillm.bench.plan import count_parameters, replica_goodput, replicas_needed
from minillm.engine.llm_engine import default_model
from minillm.entrypoints.cli import main as cli

LLAMA_3_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
              "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 8192, "rope_theta": 500000.0,
              "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001}


@pytest.fixture
def llama_3_8b(tmp_path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_3_8B))
    return tmp_path


def bench_result(path: Path, goodput: float | None, slo: dict) -> Path:
    path.write_text(json.dumps({"request_goodput": goodput, "goodput_limits_ms": slo,
                                "request_throughput": 99.0}))
    return path


def test_parameters_of_llama_3_8b(llama_3_8b):
    # Meta's model card: 8.03 B. By hand: 2 x 128256 x 4096 (embeddings, untied head)
    # + 32 x (2 x 4096^2 + 2 x 4096 x 1024 + 3 x 4096 x 14336 + 2 x 4096) + 4096
    assert count_parameters(llama_3_8b) == 8_030_261_248


def test_parameters_of_the_bundled_model_match_its_checkpoint():
    folder = Path(default_model())
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        stored = sum(_numel(f.get_slice(name).get_shape()) for name in f.keys())
    assert count_parameters(folder) == stored


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_llama_3_8b_on_an_80_gib_gpu(llama_3_8b, tmp_path, capsys):
    # By hand, float16:
    #   weights      8_030_261_248 x 2                          = 16_060_522_496 B
    #   activations  2048 x (128256 + 16 x 4096) x 4            =  1_587_544_064 B
    #   budget       int(80 GiB x 0.9) - weights - activations  = 59_661_344_768 B
    #   block        2 x 32 layers x 16 tokens x 8 heads x 128 x 2 B = 2 MiB
    #   blocks       59_661_344_768 // 2_097_152                 = 28_448
    #   4096-token sequences: 256 blocks each -> 28_448 // 256   = 111
    #   replicas for 10 req/s at 3.2 req/s each                 = ceil(3.125) = 4
    result = bench_result(tmp_path / "serve.json", 3.2, {"ttft": 500, "tpot": 50})
    cli(["plan", "--model", str(llama_3_8b / "config.json"), "--gpu-memory-gib", "80",
         "--seq-len", "4096", "--bench-result", str(result), "--target-rps", "10"])
    out = capsys.readouterr().out
    assert "KV blocks per replica:                      28448" in out, out
    assert "Max concurrent sequences of 4096 tokens:    111" in out, out
    assert "Replicas for 10 req/s:                      4 (maxReplicas)" in out, out
    assert "ttft <= 500 ms, tpot <= 50 ms" in out, out


def test_max_num_seqs_caps_the_concurrent_sequences(llama_3_8b, capsys):
    # 28_448 blocks hold 28_448 // 1 = 28_448 sequences of 16 tokens; max_num_seqs allows 256.
    cli(["plan", "--model", str(llama_3_8b), "--gpu-memory-gib", "80", "--seq-len", "16"])
    assert "Max concurrent sequences of 16 tokens:      256" in capsys.readouterr().out


def test_a_gpu_too_small_for_the_weights_holds_no_block(llama_3_8b, capsys):
    cli(["plan", "--model", str(llama_3_8b), "--gpu-memory-gib", "16", "--seq-len", "4096"])
    out = capsys.readouterr().out
    assert "KV blocks per replica:                      0" in out, out
    assert "not even one sequence of 4096 tokens fits" in out, out


@pytest.mark.parametrize("target, per_replica, expected",
                         [(10, 3.2, 4), (9.6, 3.2, 3), (0.5, 3.2, 1), (100, 0.7, 143)])
def test_replicas_needed(target, per_replica, expected):
    assert replicas_needed(target, per_replica) == expected, (target, per_replica)


def test_replicas_needed_refuses_a_replica_that_met_no_slo():
    with pytest.raises(ValueError, match="met the SLO for no request"):
        replicas_needed(5, 0.0)


def test_the_best_goodput_of_several_runs_at_one_slo(tmp_path):
    slo = {"ttft": 300}
    results = [json.loads(bench_result(tmp_path / f"{g}.json", g, slo).read_text())
               for g in (1.5, 2.5, 2.0)]
    assert replica_goodput(results) == (2.5, slo)


def test_bench_results_without_goodput_or_at_different_slos_are_refused(tmp_path):
    no_goodput = json.loads(bench_result(tmp_path / "a.json", None, {}).read_text())
    with pytest.raises(ValueError, match="--goodput"):
        replica_goodput([no_goodput])
    a = json.loads(bench_result(tmp_path / "b.json", 2.0, {"ttft": 300}).read_text())
    b = json.loads(bench_result(tmp_path / "c.json", 2.0, {"ttft": 500}).read_text())
    with pytest.raises(ValueError, match="different SLOs"):
        replica_goodput([a, b])


def test_target_without_a_measurement_is_refused(llama_3_8b):
    with pytest.raises(SystemExit, match="--bench-result"):
        cli(["plan", "--model", str(llama_3_8b), "--gpu-memory-gib", "80", "--target-rps", "5"])
