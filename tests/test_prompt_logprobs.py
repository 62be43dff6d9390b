"""`SamplingParams.prompt_logprobs` against `transformers`: the log-softmax of its logits over the
whole prompt, under chunked prefill, prefix caching, preemption and parallel samples."""
import pytest
import torch
from checkpoints import prompts_of_lengths
from transformers import AutoModelForCausalLM

from minillm import LLM, SamplingParams

TOP_K = 3
PARAMS = SamplingParams(temperature=0, max_tokens=24, prompt_logprobs=TOP_K, ignore_eos=True)


@pytest.fixture(scope="module")
def reference_model(llama_checkpoint):
    return AutoModelForCausalLM.from_pretrained(llama_checkpoint, dtype=torch.float32).eval()


@torch.inference_mode()
def reference_logprobs(model, prompt: list[int]) -> torch.Tensor:
    """Row p: transformers' log-probabilities of the token after prompt position p."""
    return torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)


def assert_matches_reference(model, prompt: list[int], entries) -> None:
    expected = reference_logprobs(model, prompt)
    assert len(entries) == len(prompt), (len(entries), len(prompt))
    assert entries[0] is None
    for pos in range(1, len(prompt)):
        row, token, entry = expected[pos - 1], prompt[pos], entries[pos]
        where = f"prompt of {len(prompt)} tokens, position {pos}"
        assert token in entry, where
        assert abs(entry[token].logprob - float(row[token])) < 1e-4, where
        assert entry[token].rank == int((row > row[token]).sum()) + 1, where
        top_values, top_ids = row.topk(TOP_K)
        for rank, (tid, value) in enumerate(zip(top_ids.tolist(), top_values.tolist()), 1):
            assert tid in entry, (where, tid)
            assert abs(entry[tid].logprob - value) < 1e-4, (where, tid)
            if tid != token:
                assert entry[tid].rank == rank, (where, tid)
        assert set(entry) <= {token, *top_ids.tolist()}, where


SETTINGS = {
    "default": {},
    "chunked-prefill": dict(max_num_batched_tokens=13),
    "preempt-recompute": dict(num_gpu_blocks_override=10, max_model_len=160),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_prompt_logprobs_match_transformers(llama_checkpoint, reference_model, setting):
    prompts = prompts_of_lengths(1, [1, 2, 17, 40, 90, 63, 75, 50])
    llm = LLM(str(llama_checkpoint), dtype="float32", **SETTINGS[setting])
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)
    for prompt, out in zip(prompts, outputs):
        assert_matches_reference(reference_model, prompt, out.prompt_logprobs)
    if setting == "preempt-recompute":
        assert llm.engine.stats.num_preemptions > 0  # some prompt was scored twice


def test_prefix_cache_is_skipped_for_prompt_logprobs(llama_checkpoint, reference_model):
    """A cached block has no logits: a request that asks for prompt logprobs computes its whole
    prompt (vLLM's behaviour); the others still hit the cache."""
    prefix = prompts_of_lengths(2, [48])[0]
    prompts = prompts_of_lengths(3, [10, 12, 14], prefix=prefix)
    llm = LLM(str(llama_checkpoint), dtype="float32", enable_prefix_caching=True, block_size=16)
    plain = SamplingParams(temperature=0, max_tokens=2)
    llm.generate({"prompt_token_ids": prompts[0]}, plain, use_tqdm=False)  # fills the cache
    scored, hit = llm.generate([{"prompt_token_ids": prompts[1]},
                                {"prompt_token_ids": prompts[2]}], [PARAMS, plain],
                               use_tqdm=False)
    assert scored.num_cached_tokens == 0
    assert hit.num_cached_tokens == 48 and hit.prompt_logprobs is None
    assert_matches_reference(reference_model, prompts[1], scored.prompt_logprobs)


def test_parallel_samples_and_zero_top_k(llama_checkpoint, reference_model):
    """k = 0 returns each prompt token's own logprob only; n = 2 shares one prompt's entries;
    the generated tokens are those of a request without prompt logprobs."""
    prompt = prompts_of_lengths(4, [30])[0]
    llm = LLM(str(llama_checkpoint), dtype="float32")
    params = SamplingParams(n=2, temperature=0, max_tokens=4, prompt_logprobs=0, ignore_eos=True)
    out = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]
    expected = reference_logprobs(reference_model, prompt)
    assert out.prompt_logprobs[0] is None
    for pos in range(1, len(prompt)):
        assert list(out.prompt_logprobs[pos]) == [prompt[pos]], pos
        got = out.prompt_logprobs[pos][prompt[pos]].logprob
        assert abs(got - float(expected[pos - 1, prompt[pos]])) < 1e-4, pos
    alone = llm.generate({"prompt_token_ids": prompt},
                         SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                         use_tqdm=False)[0]
    assert alone.prompt_logprobs is None
    assert [o.token_ids for o in out.outputs] == [alone.outputs[0].token_ids] * 2


@pytest.mark.parametrize("value", [-1, -5])
def test_negative_prompt_logprobs_are_refused(value):
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=value)

