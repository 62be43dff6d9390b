"""The engine's API: abort, parallel samples, seeds, priorities, bad input, statistics."""
import pytest
import torch

from minillm import LLM, SamplingParams
from minillm.engine.sequence import SequenceStatus
from test_engine import GREEDY, assert_no_leaks, random_prompts


@pytest.fixture(scope="module")
def llm(llama_checkpoint):
    return LLM(str(llama_checkpoint), attention_backend="torch", seed=1)


@pytest.fixture(autouse=True)
def no_leaks_after(request):
    yield
    if "llm" in request.fixturenames:
        assert_no_leaks(request.getfixturevalue("llm"))


def step_until(engine, condition, limit=500):
    for _ in range(limit):
        if condition():
            return
        engine.step()
    raise AssertionError("condition never reached")


@pytest.mark.parametrize("where", ["waiting", "mid-prefill", "mid-decode", "swapped"])
def test_abort_frees_everything(llama_checkpoint, where):
    llm = LLM(str(llama_checkpoint), attention_backend="torch", max_num_batched_tokens=16,
              num_gpu_blocks_override=8, max_model_len=128, preemption_mode="swap")
    engine = llm.engine
    long = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    for i, prompt in enumerate(random_prompts(3, 9, 384)):
        engine.add_request(str(i), {"prompt_token_ids": prompt + [1] * 40}, long)
    seq = engine.requests["2"].seqs[0]
    conditions = {
        "waiting": lambda: True,
        "mid-prefill": lambda: 0 < seq.num_computed_tokens < seq.num_prompt_tokens,
        "mid-decode": lambda: len(seq.output_token_ids) >= 3,
        "swapped": lambda: seq.status == SequenceStatus.SWAPPED,
    }
    step_until(engine, conditions[where])
    engine.abort_request("2")
    assert seq.finish_reason == "abort"
    while engine.has_unfinished_requests():
        engine.step()
    assert_no_leaks(llm)


def test_parallel_samples_share_prompt_blocks(llm):
    engine, n = llm.engine, 4
    prompt = random_prompts(1, 3, 384)[0][:5] + list(range(100, 140))  # 45 tokens, 3 blocks
    engine.add_request("n", {"prompt_token_ids": prompt},
                       SamplingParams(n=n, temperature=1.0, max_tokens=8, seed=3))
    free_before = engine.block_manager.num_free_blocks
    engine.step()  # prefill, then n first tokens: the children share the 3 prompt blocks
    assert free_before - engine.block_manager.num_free_blocks == 3
    engine.step()  # each sample writes into the shared partial block: copy-on-write
    assert free_before - engine.block_manager.num_free_blocks == 2 + n
    while engine.has_unfinished_requests():
        outputs = engine.step()
    (output,) = outputs
    assert sorted(c.index for c in output.outputs) == list(range(n))
    assert len({tuple(c.token_ids) for c in output.outputs}) > 1


def test_seed_reproducible_alone_and_in_a_batch(llm):
    prompt = {"prompt_token_ids": random_prompts(1, 4, 384)[0]}
    seeded = SamplingParams(temperature=1.0, max_tokens=16, seed=1234, ignore_eos=True)
    alone = llm.generate(prompt, seeded, use_tqdm=False)[0].outputs[0].token_ids
    mates = [{"prompt_token_ids": p} for p in random_prompts(5, 5, 384)]
    params = [SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)] * 5
    batch = llm.generate([*mates[:2], prompt, *mates[2:]], [*params[:2], seeded, *params[2:]],
                         use_tqdm=False)
    assert batch[2].outputs[0].token_ids == alone
    other = SamplingParams(temperature=1.0, max_tokens=16, seed=4321, ignore_eos=True)
    assert llm.generate(prompt, other, use_tqdm=False)[0].outputs[0].token_ids != alone


def test_priority_policy_runs_urgent_requests_first(llama_checkpoint):
    llm = LLM(str(llama_checkpoint), attention_backend="torch", max_num_seqs=1,
              scheduling_policy="priority")
    engine, order = llm.engine, []
    for request_id, priority in (("low", 5), ("high", -1), ("mid", 2)):
        engine.add_request(request_id, {"prompt_token_ids": [1, 2, 3]}, GREEDY, priority)
    while engine.has_unfinished_requests():
        order += [o.request_id for o in engine.step() if o.finished]
    assert order == ["high", "mid", "low"]


def test_stop_tokens_strings_and_lengths(llm):
    prompt = {"prompt_token_ids": random_prompts(1, 8, 384)[0]}
    free_run = llm.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0]
    assert free_run.finish_reason == "length" and len(free_run.token_ids) == GREEDY.max_tokens
    stop_id = free_run.token_ids[5]
    first = free_run.token_ids.index(stop_id)
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=24,
                                              stop_token_ids=[stop_id]), use_tqdm=False)
    assert out[0].outputs[0].token_ids == free_run.token_ids[:first + 1]
    assert (out[0].outputs[0].finish_reason, out[0].outputs[0].stop_reason) == ("stop", stop_id)
    stop_text = free_run.text[len(free_run.text) // 2:][:3]
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=24, stop=[stop_text]),
                       use_tqdm=False)[0].outputs[0]
    assert out.text == free_run.text[:free_run.text.index(stop_text)]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop_text)


def test_logprobs_are_the_models(llm, llama_checkpoint):
    from minillm.model import load_model
    from minillm.naive import ContiguousKVCache

    prompt = random_prompts(1, 10, 384)[0]
    out = llm.generate({"prompt_token_ids": prompt},
                       SamplingParams(temperature=0, max_tokens=1, logprobs=3),
                       use_tqdm=False)[0].outputs[0]
    model = load_model(llama_checkpoint)
    with torch.inference_mode():
        hidden = model(torch.tensor(prompt), torch.arange(len(prompt)),
                       ContiguousKVCache(model, len(prompt)))
        expected = torch.log_softmax(model.compute_logits(hidden[-1]), -1)
    top = expected.topk(3)
    (entry,) = out.logprobs
    assert list(entry)[0] == out.token_ids[0] == int(top.indices[0])
    assert entry[out.token_ids[0]].rank == 1
    for tid, lp in zip(top.indices.tolist(), top.values.tolist()):
        assert abs(entry[tid].logprob - lp) < 1e-5
    assert abs(out.cumulative_logprob - float(top.values[0])) < 1e-5


BAD = {
    "prompt longer than max_model_len": ({"prompt_token_ids": [1] * 600}, {}),
    "empty prompt": ({"prompt_token_ids": []}, {}),
    "token outside the vocabulary": ({"prompt_token_ids": [1, 999999]}, {}),
    "negative token": ({"prompt_token_ids": [-1]}, {}),
}
BAD_PARAMS = [dict(max_tokens=0), dict(temperature=-0.5), dict(top_p=0.0), dict(top_p=1.5),
              dict(n=0)]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_prompt_is_refused_and_engine_keeps_serving(llm, case):
    prompt, _ = BAD[case]
    engine = llm.engine
    engine.add_request("good", {"prompt_token_ids": [5, 6, 7]}, GREEDY)
    engine.step()
    with pytest.raises(ValueError):
        llm.generate(prompt, GREEDY, use_tqdm=False)
    while engine.has_unfinished_requests():
        finished = [o for o in engine.step() if o.finished]
    assert finished[0].request_id == "good" and len(finished[0].outputs[0].token_ids) == 24


@pytest.mark.parametrize("kwargs", BAD_PARAMS, ids=lambda k: next(iter(k)))
def test_bad_sampling_params_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


def test_statistics_follow_the_engine(llama_checkpoint):
    llm = LLM(str(llama_checkpoint), attention_backend="torch", num_gpu_blocks_override=10,
              max_model_len=160)
    prompts = random_prompts(8, 11, 384)
    llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    stats = llm.engine.stats
    assert stats.generation_tokens == 8 * GREEDY.max_tokens
    assert stats.prompt_tokens == sum(map(len, prompts))
    assert stats.num_preemptions > 0 and stats.num_running == stats.num_waiting == 0
    assert stats.num_blocks_used == 0 and stats.num_blocks_free == 10


def test_output_kind_final_only_reports_a_request_once(llm):
    """CUMULATIVE: an output every step that adds a token; FINAL_ONLY: one, when finished."""
    from minillm import RequestOutputKind
    engine = llm.engine
    kinds = {"c": RequestOutputKind.CUMULATIVE, "f": RequestOutputKind.FINAL_ONLY}
    for rid, kind in kinds.items():
        engine.add_request(rid, {"prompt_token_ids": [5, 6, 7]},
                           SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                                          output_kind=kind))
    seen = {"c": [], "f": []}
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen[out.request_id].append(out)
    assert [len(o.outputs[0].token_ids) for o in seen["c"]] == [1, 2, 3, 4, 5, 6]
    assert len(seen["f"]) == 1 and seen["f"][0].finished
    assert seen["f"][0].outputs[0].token_ids == seen["c"][-1].outputs[0].token_ids
    assert seen["f"][0].outputs[0].cumulative_logprob is None  # no logprobs asked, none computed


@torch.inference_mode()
def test_repetition_penalty_matches_transformers(llm, llama_checkpoint):
    """The engine hands each row's prompt and output tokens to the sampler: with a repetition
    penalty, greedy output equals transformers' (same CTRL definition) and differs from none."""
    from transformers import AutoModelForCausalLM, GenerationConfig
    prompts = random_prompts(4, 21, 384)
    penalised = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                               repetition_penalty=1.8)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], penalised, use_tqdm=False)
    hf = AutoModelForCausalLM.from_pretrained(llama_checkpoint, dtype=torch.float32).eval()
    for prompt, out in zip(prompts, outputs):
        expected = hf.generate(torch.tensor([prompt]), generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=20, eos_token_id=None, pad_token_id=0,
            repetition_penalty=1.8))  # no EOS: like ignore_eos
        assert out.outputs[0].token_ids == expected[0, len(prompt):].tolist()
    plain = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in plain] != [o.outputs[0].token_ids for o in outputs]
