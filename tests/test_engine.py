"""The paged engine against `transformers`: same tokens under every scheduling condition."""
import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from minillm import LLM, SamplingParams
from minillm.engine.sequence import SequenceStatus

NEW_TOKENS = 24
GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)


def random_prompts(count: int, seed: int, vocab: int, prefix: list[int] = ()) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 90, (count,), generator=g).tolist()
    return [list(prefix) + torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


@torch.inference_mode()
def transformers_greedy(path, prompts: list[list[int]]) -> list[list[int]]:
    """Each prompt alone through `transformers`' own generate: the reference."""
    return [tokens for tokens, _ in transformers_greedy_logprobs(path, prompts)]


@torch.inference_mode()
def transformers_greedy_logprobs(path, prompts: list[list[int]]):
    """Per prompt: transformers' greedy tokens and each one's log-probability."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None,
                              pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    results = []
    for p in prompts:
        out = model.generate(torch.tensor([p]), generation_config=config)
        tokens = out.sequences[0, len(p):].tolist()
        logprobs = [float(torch.log_softmax(scores[0], -1)[t])
                    for scores, t in zip(out.scores, tokens)]
        results.append((tokens, logprobs))
    return results


def assert_no_leaks(llm: LLM) -> None:
    """Every block free (cached contents may stay), every queue empty, no request left."""
    engine = llm.engine
    bm, sched = engine.block_manager, engine.scheduler
    assert not (sched.waiting or sched.running or sched.swapped or engine.requests)
    assert bm.num_free_blocks == bm.num_blocks
    assert all(block.ref_count == 0 for block in bm.blocks)
    assert len(bm.free_cpu_blocks) == engine.cache.cpu_k.shape[1]


def run_greedy(llm: LLM, prompts) -> list[list[int]]:
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert_no_leaks(llm)
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def reference(checkpoint):
    vocab = 384
    prompts = random_prompts(16, 0, vocab)
    return prompts, transformers_greedy_logprobs(checkpoint, prompts)


SETTINGS = {
    "default": {},
    "no-prefix-caching": dict(enable_prefix_caching=False),
    "chunked-prefill": dict(max_num_batched_tokens=13),
    "preempt-recompute": dict(num_gpu_blocks_override=10, max_model_len=160),
    "preempt-swap": dict(num_gpu_blocks_override=10, max_model_len=160, preemption_mode="swap"),
    "one-at-a-time": dict(max_num_seqs=1),
    "block-size-32": dict(block_size=32),
}


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_mixed_batch_matches_transformers(checkpoint, reference, setting, backend):
    """Same tokens, and each token's log-probability within 1e-4: equal tokens alone can hide an
    attention error on random weights, whose attention is nearly uniform."""
    prompts, expected = reference
    llm = LLM(str(checkpoint), attention_backend=backend, **SETTINGS[setting])
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=0)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert_no_leaks(llm)
    for out, (tokens, logprobs) in zip(outputs, expected):
        completion = out.outputs[0]
        assert completion.token_ids == tokens
        got = [entry[t].logprob for entry, t in zip(completion.logprobs, tokens)]
        assert got == pytest.approx(logprobs, abs=1e-4)
    if setting.startswith("preempt"):
        assert llm.engine.stats.num_preemptions > 0


def test_shared_prefixes_hit_the_cache(checkpoint):
    prefix = random_prompts(1, 5, 384)[0][:40] + [7] * 8  # 48 tokens: three full blocks
    prompts = random_prompts(6, 6, 384, prefix=prefix)
    expected = transformers_greedy(checkpoint, prompts)
    llm = LLM(str(checkpoint), attention_backend="torch")
    assert run_greedy(llm, prompts[:1]) == expected[:1]  # fills the cache
    assert run_greedy(llm, prompts[1:]) == expected[1:]  # every later prompt hits it
    stats = llm.engine.stats
    assert stats.prefix_cache_hits >= 5 * 48 and stats.prefix_cache_queries > stats.prefix_cache_hits
