"""`SamplingParams.logit_bias`: a per-row addition to the logits before sampling."""
import pytest
import torch
from checkpoints import VOCAB_SIZE, prompts_of_lengths

from minillm import LLM, SamplingParams
from minillm.sampling import sample

GREEDY = dict(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(llama_checkpoint):
    return LLM(str(llama_checkpoint), dtype="float32")


def generate(llm, prompts, params):
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


def test_plus_100_forces_a_token_and_minus_100_removes_the_argmax(llm):
    prompts = prompts_of_lengths(5, [7, 30])
    plain = generate(llm, prompts, SamplingParams(**GREEDY))
    forced_token = 123
    assert all(forced_token not in tokens for tokens in plain)
    forced = generate(llm, prompts, SamplingParams(**GREEDY, logit_bias={forced_token: 100}))
    assert forced == [[forced_token] * 8] * 2
    for prompt, tokens in zip(prompts, plain):
        banned = generate(llm, [prompt], SamplingParams(**GREEDY, logit_bias={tokens[0]: -100}))
        assert banned[0][0] != tokens[0], prompt


def test_bias_is_per_row(llm):
    """In one batch, a request with a bias leaves the others' tokens alone."""
    prompts = prompts_of_lengths(6, [12, 25, 40])
    alone = generate(llm, prompts, SamplingParams(**GREEDY))
    params = [SamplingParams(**GREEDY), SamplingParams(**GREEDY, logit_bias={7: 100}),
              SamplingParams(**GREEDY)]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    got = [o.outputs[0].token_ids for o in outputs]
    assert got[0] == alone[0] and got[2] == alone[2] and got[1] == [7] * 8


def test_sampler_adds_the_bias_to_the_logits():
    """Against a hand-biased copy of the logits: same greedy choice, and the returned logprobs
    are the raw model's (vLLM reads them before any processing)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=gen)
    biases = [{3: 2.5, 9: -1.0}, None, {int(logits[2].argmax()): -100.0, 4: 0.5}]
    params = [SamplingParams(temperature=0, logit_bias=b, logprobs=1) for b in biases]
    expected = logits.clone()
    for row, bias in enumerate(biases):
        for token, value in (bias or {}).items():
            expected[row, token] += value
    out = sample(logits, params, [[]] * 3, [[]] * 3, [torch.Generator()] * 3, [])
    assert out.token_ids == expected.argmax(dim=-1).tolist()
    raw = torch.log_softmax(logits, dim=-1)
    for row, token in enumerate(out.token_ids):
        assert abs(out.logprobs[row] - float(raw[row, token])) < 1e-6, row


@pytest.mark.parametrize("bias", [{1: 100.5}, {1: -101}, {1: float("nan")}, {"1": 1.0},
                                  {1: "big"}])
def test_bad_biases_are_refused(bias):
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias=bias)


@pytest.mark.parametrize("token", [VOCAB_SIZE, -1, 10**12])
def test_ids_outside_the_vocabulary_are_refused_and_the_engine_stays_healthy(llm, token):
    with pytest.raises(ValueError, match="logit_bias token ids"):
        llm.engine.add_request("bad", [1, 2, 3], SamplingParams(logit_bias={token: 1.0}))
    assert not llm.engine.requests and not llm.engine.has_unfinished_requests()
    assert generate(llm, [[1, 2, 3]], SamplingParams(**GREEDY))[0]
