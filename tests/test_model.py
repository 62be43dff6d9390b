"""minillm's model against `transformers` on random-weight checkpoints of every architecture."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, GenerationConfig

from minillm.model import CheckpointError, load_model, load_tokenizer
from minillm.model import packed_linear
from minillm.model.packed_linear import (PackedLinear, can_pack, pack_linear_layers,
                                          packing_refused, padded_rows)
from minillm.naive import ContiguousKVCache, generate_ids


def random_prompt(n: int, seed: int, vocab: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def hf_model(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.inference_mode()
def test_logits_match_transformers(checkpoint):
    model, reference = load_model(checkpoint, dtype="float32"), hf_model(checkpoint)
    for seed, n in enumerate((1, 7, 40, 200)):
        ids = random_prompt(n, seed, model.config.vocab_size)
        expected = reference(torch.tensor([ids])).logits[0]
        hidden = model(torch.tensor(ids), torch.arange(n), ContiguousKVCache(model, n))
        torch.testing.assert_close(model.compute_logits(hidden), expected, atol=1e-4, rtol=0)


@torch.inference_mode()
def test_greedy_generation_matches_transformers(checkpoint):
    model, reference = load_model(checkpoint, dtype="float32"), hf_model(checkpoint)
    no_eos = GenerationConfig(do_sample=False, max_new_tokens=40, eos_token_id=None,
                              pad_token_id=0)
    for seed, n in enumerate((3, 25)):
        ids = random_prompt(n, 100 + seed, model.config.vocab_size)
        expected = reference.generate(torch.tensor([ids]), generation_config=no_eos)[0, n:]
        assert generate_ids(model, ids, 40) == expected.tolist()


def test_half_precision_dtypes_load_and_run(llama_checkpoint):
    for dtype in ("float16", "bfloat16"):
        model = load_model(llama_checkpoint, dtype=dtype)
        assert model.lm_head.weight.dtype == getattr(torch, dtype)
        reference = load_model(llama_checkpoint, dtype="float32")
        ids = random_prompt(12, 7, model.config.vocab_size)
        with torch.inference_mode():
            got = model.compute_logits(model(torch.tensor(ids), torch.arange(12),
                                             ContiguousKVCache(model, 12)))
            want = reference.compute_logits(reference(torch.tensor(ids), torch.arange(12),
                                                      ContiguousKVCache(reference, 12)))
        torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)


def test_converting_the_model_keeps_its_rotary_frequencies_exact(checkpoint):
    """`.to(bfloat16)` converts weights, not the rotation frequencies: a float32 model taken
    through bfloat16 and back computes what the same round trip of its weights alone gives."""
    model = load_model(checkpoint, dtype="float32")
    frequencies = model.model.rotary_emb.inv_freq.clone()
    model.to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    model.to(torch.float32)
    assert torch.equal(model.model.rotary_emb.inv_freq, frequencies)
    weights_only = load_model(checkpoint, dtype="float32")
    weights_only.load_state_dict({name: tensor.bfloat16().float()
                                  for name, tensor in weights_only.state_dict().items()})
    ids = random_prompt(12, 8, model.config.vocab_size)
    with torch.inference_mode():
        got, want = (m.compute_logits(m(torch.tensor(ids), torch.arange(12),
                                        ContiguousKVCache(m, 12))) for m in (model, weights_only))
    assert torch.equal(got, want), (got - want).abs().max()


def test_sampling_is_reproducible_with_a_seed(llama_checkpoint):
    model = load_model(llama_checkpoint)
    ids = random_prompt(5, 3, model.config.vocab_size)
    first = generate_ids(model, ids, 20, temperature=1.0, seed=11)
    assert first == generate_ids(model, ids, 20, temperature=1.0, seed=11)
    assert first != generate_ids(model, ids, 20, temperature=1.0, seed=12)


def test_tokenizer_and_chat_template(llama_checkpoint):
    tok = load_tokenizer(llama_checkpoint)
    assert tok.decode(tok.encode("the lazy dog")) == "the lazy dog"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("assistant:") and "user: hi" in chat


# --- broken checkpoints: one clear error each ---------------------------------------------------

def copy_checkpoint(src, dst):
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_unknown_architecture(llama_checkpoint, tmp_path):
    folder = copy_checkpoint(llama_checkpoint, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported architecture 'GPT2LMHeadModel'"):
        load_model(folder)


def test_missing_weights_file(llama_checkpoint, tmp_path):
    folder = copy_checkpoint(llama_checkpoint, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_model(folder)


def test_missing_tensor_is_named(llama_checkpoint, tmp_path):
    folder = copy_checkpoint(llama_checkpoint, tmp_path)
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        load_model(folder)


def test_wrong_shape_is_named(llama_checkpoint, tmp_path):
    folder = copy_checkpoint(llama_checkpoint, tmp_path)
    weights = load_file(folder / "model.safetensors")
    weights["model.norm.weight"] = torch.ones(3)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.norm.weight has shape \\(3,\\)"):
        load_model(folder)


def test_missing_tokenizer(llama_checkpoint, tmp_path):
    folder = copy_checkpoint(llama_checkpoint, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_tokenizer(folder)


# --- the engine's CPU model: linear layers packed for oneDNN where the probe allows -----------

def engine_model(checkpoint, dtype: str):
    """The model as the engine builds it on a CPU: packed where `can_pack` says so."""
    model = load_model(checkpoint, dtype=dtype)
    if can_pack(model):
        pack_linear_layers(model)
    return model


def count_layers(model) -> tuple[int, int]:
    """(PackedLinear, nn.Linear) modules in the model."""
    kinds = [type(m) for m in model.modules()]
    return kinds.count(PackedLinear), kinds.count(nn.Linear)


@torch.inference_mode()
@pytest.mark.parametrize("disable_packing", [False, True], ids=["probe", "disabled"])
@pytest.mark.parametrize("dtype, atol", [("float32", 1e-4), ("bfloat16", 0.1)])
def test_packed_or_fallback_linear_layers_match_transformers(checkpoint, dtype, atol,
                                                             disable_packing, monkeypatch):
    """Every nn.Linear is replaced by a oneDNN-packed one where the probe accepts the dtype on
    this CPU (and packing is not switched off), none where not; the logits match either way."""
    if disable_packing:
        monkeypatch.setenv("MINILLM_DISABLE_PACKING", "1")
    else:  # also under `make test-fallback`, which switches packing off for the other tests
        monkeypatch.delenv("MINILLM_DISABLE_PACKING", raising=False)
    model = engine_model(checkpoint, dtype)
    linears = 7 * model.config.num_layers + 1
    packs = not disable_packing and packing_refused(getattr(torch, dtype)) is None
    assert count_layers(model) == ((linears, 0) if packs else (0, linears))
    reference = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype))
    ids = random_prompt(50, 7, model.config.vocab_size)
    expected = reference.eval()(torch.tensor([ids])).logits[0].float()
    hidden = model(torch.tensor(ids), torch.arange(50), ContiguousKVCache(model, 50))
    torch.testing.assert_close(model.compute_logits(hidden).float(), expected, atol=atol, rtol=0)


def dense_state(model) -> dict[str, torch.Tensor]:
    """The model's state_dict with packed weights unpacked under nn.Linear's name."""
    return {name.replace(".packed_weight", ".weight"):
            tensor.to_dense() if tensor.layout == torch._mkldnn else tensor
            for name, tensor in model.state_dict().items()}


def logits_of(model, ids: list[int]) -> torch.Tensor:
    n = len(ids)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(ids), torch.arange(n),
                                          ContiguousKVCache(model, n)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_model_keeps_every_tensor_in_state_dict_and_through_to(checkpoint, dtype):
    """Packed weights are buffers: the state_dict holds as many tensors as the unpacked model's,
    each linear layer's `weight` as `packed_weight` (a oneDNN tensor whose `to_dense()` is the
    weight), and `.to()` converts them, to every other dtype the probe accepts and back, as it
    converts an unpacked model (float32 to bfloat16 rounds: the round trip is compared with the
    same round trip unpacked)."""
    if packing_refused(getattr(torch, dtype)) is not None:
        pytest.skip(f"the probe refuses {dtype} on this CPU: {packing_refused(getattr(torch, dtype))}")
    model = load_model(checkpoint, dtype=dtype)
    unpacked = {name: t.clone() for name, t in model.state_dict().items()}
    ids = random_prompt(20, 3, model.config.vocab_size)
    logits = logits_of(pack_linear_layers(model), ids)

    state = model.state_dict()
    assert len(state) == len(unpacked)
    assert sum(name.endswith(".packed_weight") for name in state) == 7 * model.config.num_layers + 1
    assert dense_state(model).keys() == unpacked.keys()
    for name, tensor in dense_state(model).items():
        assert torch.equal(tensor, unpacked[name]), name

    assert torch.equal(logits_of(model.to("cpu").to(getattr(torch, dtype)), ids), logits)
    for other in ("float32", "bfloat16"):
        if other == dtype or packing_refused(getattr(torch, other)) is not None:
            continue
        converted = dense_state(model.to(getattr(torch, other)))
        loaded = load_model(checkpoint, dtype=dtype).to(getattr(torch, other)).state_dict()
        assert converted.keys() == loaded.keys()
        for name, tensor in converted.items():
            assert torch.equal(tensor, loaded[name]), (other, name)
        assert count_layers(model) == (7 * model.config.num_layers + 1, 0)
        model.to(getattr(torch, dtype))
        round_trip = load_model(checkpoint, dtype=dtype).to(getattr(torch, other))
        round_trip.to(getattr(torch, dtype))
        logits = logits_of(pack_linear_layers(round_trip), ids)
    assert torch.equal(logits_of(model, ids), logits)  # back where it started


def test_padded_rows_buckets_every_step_size_into_few_shapes():
    """Every row count a step can carry maps to a bucket at least as large, at most 12.5 %
    larger (exact up to 16), and all of 1..4096 to fewer than 90 shapes: oneDNN prepares (and
    keeps) a kernel per shape, so unbucketed row counts grow a server's memory without end."""
    buckets = {padded_rows(rows) for rows in range(1, 4097)}
    assert len(buckets) < 90, len(buckets)
    for rows in range(1, 4097):
        padded = padded_rows(rows)
        assert rows <= padded <= max(rows, 16) * 1.125, (rows, padded)
        assert padded == rows or rows > 16, (rows, padded)
        assert padded_rows(padded) == padded, (rows, padded)  # a bucket is its own bucket


@torch.inference_mode()
@pytest.mark.parametrize("shape", [(1, 48), (17, 48), (3, 33, 48), (130, 48)])
def test_packed_linear_pads_rows_and_returns_only_the_real_ones(shape, monkeypatch):
    """Odd row counts and 3-D inputs: the same numbers as F.linear (in float64), the padding
    rows dropped, and oneDNN saw only the bucketed shape."""
    if packing_refused(torch.float32) is not None:
        pytest.skip(packing_refused(torch.float32))
    gen = torch.Generator().manual_seed(sum(shape))
    weight, bias = torch.randn(40, 48, generator=gen), torch.randn(40, generator=gen)
    x = torch.randn(shape, generator=gen)
    seen, onednn_linear = [], packed_linear.onednn_linear
    monkeypatch.setattr(packed_linear, "onednn_linear",
                        lambda x, *args: seen.append(x.shape[0]) or onednn_linear(x, *args))
    out = PackedLinear(weight, bias)(x)
    expected = torch.nn.functional.linear(x.double(), weight.double(), bias.double())
    assert out.shape == (*shape[:-1], 40)
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=0)
    rows = x.numel() // 48
    assert seen == [padded_rows(rows)], (rows, seen)


@torch.inference_mode()
def test_packed_linear_runs_fewer_rows_than_plain_below_unpacked(monkeypatch):
    """Below `plain_below` rows the product is F.linear's on the plain copy (exactly, and oneDNN
    is not called); from it on, oneDNN's. The copy is not in the state_dict."""
    if packing_refused(torch.float32) is not None:
        pytest.skip(packing_refused(torch.float32))
    gen = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(40, 48, generator=gen), torch.randn(40, generator=gen)
    seen, onednn_linear = [], packed_linear.onednn_linear
    monkeypatch.setattr(packed_linear, "onednn_linear",
                        lambda x, *args: seen.append(x.shape[0]) or onednn_linear(x, *args))
    layer = PackedLinear(weight, bias, plain_below=4)
    assert set(layer.state_dict()) == {"packed_weight", "bias"}
    for rows in (1, 3, 4, 9):
        x = torch.randn(rows, 48, generator=gen)
        out = layer(x)
        if rows < 4:
            assert torch.equal(out, torch.nn.functional.linear(x, weight, bias)), rows
        else:
            torch.testing.assert_close(out, torch.nn.functional.linear(x, weight, bias))
        assert seen == ([] if rows < 4 else [rows]), (rows, seen)
        seen.clear()


@pytest.mark.parametrize("plain, packed, expected", [
    ((1, 1, 1, 1, 1), (9, 9, 9, 9, 9), math.inf),  # F.linear clearly faster at every row count
    ((1, 1, 9, 9, 9), (9, 9, 9, 9, 9), 16),        # ... up to 16 rows
    ((9, 1, 1, 1, 1), (9, 9, 9, 9, 9), 0),          # packed from the first row: no plain copy
    ((7.5, 1, 1, 1, 1), (9, 9, 9, 9, 9), 0),        # within the margin is not "clearly"
])
def test_plain_below_is_the_first_timed_row_count_where_packing_keeps_up(plain, packed, expected,
                                                                         monkeypatch):
    """The timing's verdict per ROW_GRID entry (F.linear's time, then the packed layer's)."""
    times = iter(t for pair in zip(plain, packed) for t in pair)
    monkeypatch.setattr(packed_linear, "median_seconds", lambda run: next(times))
    packed_linear.plain_below.cache_clear()
    try:
        assert packed_linear.plain_below(40, 48, False, torch.float32) == expected
    finally:
        packed_linear.plain_below.cache_clear()  # the real timing for the rest of the run
