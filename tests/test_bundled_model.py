"""The bundled minillm-tiny checkpoint: transformers reads it, and minillm generates the same tokens."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minillm.assets import DEFAULT_MODEL
from minillm.model import load_model, load_tokenizer
from minillm.naive import generate_ids

PROMPTS = ["Once upon a time", "It is a truth universally acknowledged",
           "She looked at him and said", "The weather was so fine that"]


@pytest.fixture(scope="module")
def hf_model():
    return AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(DEFAULT_MODEL)


def test_folder_has_the_hugging_face_files():
    for name in ("config.json", "generation_config.json", "model.safetensors",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "README.md"):
        assert (DEFAULT_MODEL / name).is_file(), name
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]   # grouped-query attention
    assert config["torch_dtype"] == "float16"
    # Small enough to ship inside the package.
    assert (DEFAULT_MODEL / "model.safetensors").stat().st_size < 25 * 2**20


def test_tokenizer_round_trips_and_has_special_tokens(tokenizer):
    text = "It was a fine day; Mr. Darcy said: \"Café, 1813!\"\n  (naïve) ünïcode ✓"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id                  # a prompt starts like a paragraph
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"
    assert len(tokenizer) == 4096
    for token in ("<|user|>", "<|assistant|>", "<|end|>"):
        assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1, token


def test_chat_template(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|endoftext|><|system|>\nBe brief.<|end|>\n"
                    "<|user|>\nHello!<|end|>\n<|assistant|>\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):            # transformers 5 returns a BatchEncoding, 4.x a list
        ids = ids["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") in ids


@torch.inference_mode()
def test_transformers_generates_words(hf_model, tokenizer):
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    out = hf_model.generate(ids, do_sample=False, max_new_tokens=24)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    words = text.split()
    assert len(words) >= 3
    # A trained model writes mostly lowercase alphabetic words, not byte soup.
    alphabetic = [w for w in words if w.strip(".,;:!?\"'").isalpha()]
    assert len(alphabetic) >= 0.7 * len(words), text


@torch.inference_mode()
def test_chat_reply_has_words_and_ends_its_turn(hf_model, tokenizer):
    messages = [{"role": "user", "content": "How do you do?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    out = hf_model.generate(ids, do_sample=False, max_new_tokens=100)   # generation_config: stop ids
    reply = out[0, ids.shape[1]:].tolist()
    assert len(tokenizer.decode(reply, skip_special_tokens=True).split()) >= 2
    assert reply[-1] in (tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id)


def hf_greedy(hf_model, ids: list[int], n: int) -> list[int]:
    """n argmax tokens from transformers, ignoring EOS.

    Written out by hand because generate() fills an unset eos_token_id from the checkpoint's
    generation_config.json and would stop at the end of the paragraph.
    """
    ids = list(ids)
    for _ in range(n):
        ids.append(int(hf_model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-n:]


@torch.inference_mode()
def test_minillm_greedy_matches_transformers(hf_model, tokenizer):
    model = load_model(DEFAULT_MODEL, dtype="float32")
    assert load_tokenizer(DEFAULT_MODEL).encode("Once") == tokenizer.encode("Once")
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        assert generate_ids(model, ids, 32) == hf_greedy(hf_model, ids, 32), prompt
