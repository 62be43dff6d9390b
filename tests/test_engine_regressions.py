"""One test per defect that review and a differential fuzz found in the engine (issue 11): each
failed before its fix."""
import math

import pytest
import torch

from minillm import LLM, SamplingParams
from minillm.engine.block_manager import chain_hash
from minillm.sampling import sample
from test_engine import assert_no_leaks, random_prompts

BUNDLED_VOCAB = 4096


@pytest.fixture(scope="module")
def bundled():
    return LLM(attention_backend="torch", max_model_len=40, block_size=8)


def greedy_ids(llm, prompts, max_tokens):
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in max_tokens]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert_no_leaks(llm)
    return [o.outputs[0].token_ids for o in outputs]


def test_swap_preemption_keeps_the_kv_cache(bundled):
    """A step with only swap-ins used to return before the block moves ran; the next step's
    swap-out then overwrote CPU blocks that the deferred swap-in had not read back yet."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, BUNDLED_VOCAB, (n,), generator=g).tolist() for n in (5, 1, 13, 22)]
    max_tokens = [27, 21, 1, 14]
    tight = LLM(attention_backend="torch", max_model_len=40, block_size=8,
                num_gpu_blocks_override=5, preemption_mode="swap")
    assert greedy_ids(tight, prompts, max_tokens) == greedy_ids(bundled, prompts, max_tokens)
    assert tight.engine.stats.num_preemptions > 0


def test_priority_list_must_match_the_prompts(bundled):
    with pytest.raises(ValueError, match="priorities"):
        bundled.generate(["a", "b", "c"], SamplingParams(max_tokens=2), priority=[0, 1],
                         use_tqdm=False)
    assert_no_leaks(bundled)


def test_parallel_samples_respect_max_num_seqs(llama_checkpoint):
    llm = LLM(str(llama_checkpoint), attention_backend="torch", max_num_seqs=1)
    engine = llm.engine
    engine.add_request("n4", {"prompt_token_ids": [5, 6, 7, 8, 9]},
                       SamplingParams(n=4, temperature=1.0, max_tokens=6, seed=7))
    most_running, outputs = 0, []
    while engine.has_unfinished_requests():
        outputs += engine.step()
        most_running = max(most_running, len(engine.scheduler.running))
    assert most_running == 1, f"{most_running} sequences ran at once with max_num_seqs=1"
    (output,) = [o for o in outputs if o.finished]
    assert sorted(len(c.token_ids) for c in output.outputs) == [6, 6, 6, 6]
    assert_no_leaks(llm)


def test_parallel_samples_equal_their_seeded_singles(llama_checkpoint):
    """Sample i of a seeded n-sample request draws like a single request seeded seed + i, however
    many of them may run at once."""
    prompt = {"prompt_token_ids": random_prompts(1, 11, 384)[0]}
    singles = [LLM(str(llama_checkpoint), attention_backend="torch").generate(
        prompt, SamplingParams(temperature=1.0, max_tokens=8, seed=40 + i, ignore_eos=True),
        use_tqdm=False)[0].outputs[0].token_ids for i in range(3)]
    for max_num_seqs in (1, 2, 8):
        llm = LLM(str(llama_checkpoint), attention_backend="torch", max_num_seqs=max_num_seqs)
        out = llm.generate(prompt, SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=40,
                                                  ignore_eos=True), use_tqdm=False)[0]
        assert [c.token_ids for c in out.outputs] == singles, f"max_num_seqs={max_num_seqs}"


def test_prefix_cache_counters_count_each_admission_once(llama_checkpoint):
    """A request refused admission for lack of blocks used to be counted at every try."""
    llm = LLM(str(llama_checkpoint), attention_backend="torch", num_gpu_blocks_override=8,
              max_model_len=128, block_size=16)
    engine = llm.engine
    engine.add_request("big", {"prompt_token_ids": list(range(1, 100))},
                       SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    engine.step()
    engine.add_request("late", {"prompt_token_ids": list(range(200, 233))},
                       SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    refused_steps = 0
    while engine.has_unfinished_requests():
        refused_steps += bool(engine.scheduler.waiting)
        engine.step()
    assert refused_steps >= 2  # the 33-token request did wait
    assert engine.stats.prefix_cache_queries == 99 + 33


def test_block_keys_are_sha256_chains():
    """Python's hash() of a tuple is 64 bits and can be made to collide; keys are SHA-256 now."""
    a, b = chain_hash(None, [1, 2, 3]), chain_hash(None, [1, 2, 4])
    assert isinstance(a, bytes) and len(a) == 32 and a != b
    assert chain_hash(a, [7]) != chain_hash(b, [7]) != chain_hash(None, [7])


def test_a_hash_collision_is_not_served(llama_checkpoint, monkeypatch):
    """Even if two blocks' keys collided, the hit check compares the tokens: no other request's
    KV cache is ever used."""
    import minillm.engine.block_manager as bm
    prompts = [list(range(1, 40)), list(range(41, 80))]
    llm = LLM(str(llama_checkpoint), attention_backend="torch")
    expected = [o.outputs[0].token_ids for o in llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)]
    monkeypatch.setattr(bm, "chain_hash", lambda parent, tokens: b"same key for every block")
    colliding = LLM(str(llama_checkpoint), attention_backend="torch")
    for prompt, tokens in zip(prompts, expected):
        out = colliding.generate({"prompt_token_ids": prompt},
                                 SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                                 use_tqdm=False)[0]
        assert out.outputs[0].token_ids == tokens and out.num_cached_tokens == 0


@pytest.mark.parametrize("bad", [
    dict(top_k=2**63), dict(repetition_penalty=1e-46), dict(repetition_penalty=0.0),
    dict(temperature=math.inf), dict(temperature=1e39), dict(temperature=math.nan),
    dict(top_p=math.nan), dict(min_p=math.nan), dict(presence_penalty=math.nan),
    dict(frequency_penalty=math.inf), dict(repetition_penalty=math.inf),
    dict(seed=2**64 - 1), dict(seed=2**63 - 1, n=2), dict(seed=-2**63 - 1),
    dict(stop=["x"] * 65), dict(stop=["y" * 4097]), dict(stop=[""]),
])
def test_values_that_would_break_a_batch_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


@pytest.mark.parametrize("edge", [dict(top_k=2**62), dict(seed=2**63 - 2, n=2),
                                  dict(repetition_penalty=1e-30, min_tokens=3),
                                  dict(temperature=1e30, min_tokens=3)])
def test_extreme_but_valid_values_never_fail_their_batch_mates(bundled, edge):
    """A top_k beyond the vocabulary keeps all of it (as vLLM); a tiny repetition penalty or a
    huge temperature used to give NaN probabilities (inf - inf) and fail the whole step."""
    mate = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    alone = bundled.generate({"prompt_token_ids": [3, 4, 5]}, mate, use_tqdm=False)
    both = bundled.generate([{"prompt_token_ids": [3, 4, 5]}, {"prompt_token_ids": [3, 4, 5, 3]}],
                            [mate, SamplingParams(max_tokens=6, ignore_eos=True, **edge)], use_tqdm=False)
    assert both[0].outputs[0].token_ids == alone[0].outputs[0].token_ids
    assert len(both[1].outputs[0].token_ids) == 6
    assert_no_leaks(bundled)


def test_sampler_keeps_probabilities_finite_for_overflowing_logits():
    logits = torch.tensor([[3e38, 3e38, -1.0, float("-inf")]])
    params = [SamplingParams(temperature=1e-4)]
    token = sample(logits, params, [[]], [[]], [torch.Generator().manual_seed(0)], []).token_ids
    assert token[0] in (0, 1)
