"""Differential fuzz: random workloads on a tightly constrained engine must give the same tokens
and logprobs as one unconstrained run, and give back every block.

Each workload draws shared prefixes, n = 1-3 samples (greedy or seeded), prompts of 1-30 tokens,
a tiny KV budget and token budget, swap or recompute, prefix caching on or off, and the torch or
cpu attention backend. The seed of a run is printed with any failure (set MINILLM_FUZZ_SEED to
replay it); each CI run draws new workloads.
"""
import os
import random

import pytest

from minillm import LLM, SamplingParams
from test_engine import assert_no_leaks

NUM_WORKLOADS = 40
RUN_SEED = int(os.environ.get("MINILLM_FUZZ_SEED", random.randrange(2**32)))
MAX_MODEL_LEN = 64


def draw_requests(rng: random.Random, vocab: int) -> list[tuple[list[int], SamplingParams]]:
    prefixes = [[rng.randrange(vocab) for _ in range(rng.randrange(0, 21))] for _ in range(2)]
    requests = []
    for _ in range(rng.randrange(1, 7)):
        prompt = rng.choice(prefixes) + [rng.randrange(vocab) for _ in range(rng.randrange(1, 31))]
        max_tokens = rng.randrange(1, 31)
        greedy = rng.random() < 0.5
        params = SamplingParams(n=rng.randrange(1, 4), temperature=0 if greedy else 1.0,
                                seed=rng.randrange(2**31), max_tokens=max_tokens,
                                ignore_eos=True, logprobs=0)
        requests.append((prompt[:MAX_MODEL_LEN - max_tokens], params))
    return requests


def draw_engine(rng: random.Random) -> dict:
    block_size = rng.choice([8, 16])
    min_blocks = MAX_MODEL_LEN // block_size  # one sequence of max_model_len must fit
    return dict(block_size=block_size, max_model_len=MAX_MODEL_LEN,
                num_gpu_blocks_override=rng.randrange(min_blocks, 2 * min_blocks),
                max_num_batched_tokens=rng.randrange(1, 65), max_num_seqs=rng.randrange(1, 9),
                preemption_mode=rng.choice(["swap", "recompute"]), swap_space=0.001,
                enable_prefix_caching=rng.random() < 0.5,
                attention_backend=rng.choice(["torch", "cpu"]))


def results(llm: LLM, requests) -> list[list[tuple[list[int], list[float]]]]:
    outputs = llm.generate([{"prompt_token_ids": p} for p, _ in requests],
                           [params for _, params in requests], use_tqdm=False)
    assert_no_leaks(llm)
    return [[(c.token_ids, [entries[t].logprob for t, entries in zip(c.token_ids, c.logprobs)])
             for c in o.outputs] for o in outputs]


@pytest.fixture(scope="module")
def reference_llm(llama_checkpoint):
    return LLM(str(llama_checkpoint), attention_backend="torch", max_model_len=MAX_MODEL_LEN,
               enable_prefix_caching=False, swap_space=0)


@pytest.mark.parametrize("workload", range(NUM_WORKLOADS))
def test_constrained_engine_equals_unconstrained_run(llama_checkpoint, reference_llm, workload):
    rng = random.Random(RUN_SEED * 1000 + workload)
    requests = draw_requests(rng, vocab=384)
    engine = draw_engine(rng)
    where = f"MINILLM_FUZZ_SEED={RUN_SEED} workload {workload}: {engine}"
    expected = results(reference_llm, requests)
    got = results(LLM(str(llama_checkpoint), **engine), requests)
    for i, (want, have) in enumerate(zip(expected, got)):
        for sample, ((tokens, logprobs), (tokens2, logprobs2)) in enumerate(zip(want, have)):
            assert tokens2 == tokens, f"{where}: request {i} sample {sample} tokens differ"
            assert logprobs2 == pytest.approx(logprobs, abs=1e-4), \
                f"{where}: request {i} sample {sample} logprobs differ"
