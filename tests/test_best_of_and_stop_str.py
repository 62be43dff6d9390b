"""`SamplingParams.best_of` (the n likeliest of best_of samples) and `include_stop_str_in_output`
(the stop string stays in the text), offline, against references computed independently."""
import pytest
from checkpoints import prompts_of_lengths

from minillm import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(llama_checkpoint):
    return LLM(str(llama_checkpoint), dtype="float32")


def run(llm, prompt, params):
    return llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs


@pytest.mark.parametrize("seed", [3, 11])
def test_best_of_returns_the_n_likeliest_samples(llm, seed):
    """Sample i is seeded seed + i whatever n is, so the best_of run draws the same samples
    as an n=best_of run; the reference ranks that run's cumulative logprobs itself."""
    prompt = prompts_of_lengths(seed, [9])[0]
    common = dict(temperature=1.0, max_tokens=6, ignore_eos=True, seed=seed)
    every = run(llm, prompt, SamplingParams(n=5, logprobs=0, **common))
    best = sorted(every, key=lambda c: c.cumulative_logprob, reverse=True)[:2]
    got = run(llm, prompt, SamplingParams(n=2, best_of=5, **common))
    assert [c.token_ids for c in got] == [c.token_ids for c in best], seed
    assert [c.index for c in got] == [0, 1]
    assert [c.cumulative_logprob for c in got] == pytest.approx(
        [c.cumulative_logprob for c in best], abs=1e-5)
    assert all(c.logprobs is None for c in got)  # ranked by logprobs, but none were asked for
    assert len({tuple(c.token_ids) for c in every}) > 2  # the choice was a real one


def test_best_of_below_n_is_refused():
    with pytest.raises(ValueError, match="best_of"):
        SamplingParams(n=3, best_of=2)


def test_include_stop_str_in_output_keeps_the_stop_string(llm):
    prompt = prompts_of_lengths(7, [10])[0]
    greedy = dict(temperature=0, max_tokens=16, ignore_eos=True)
    text = run(llm, prompt, SamplingParams(**greedy))[0].text
    stop = text[4:8]
    at = text.find(stop)
    assert stop.strip() and at >= 0, text
    cut = run(llm, prompt, SamplingParams(**greedy, stop=stop))[0]
    kept = run(llm, prompt, SamplingParams(**greedy, stop=stop, include_stop_str_in_output=True))
    assert cut.text == text[:at] and cut.stop_reason == stop
    assert kept[0].text == text[:at + len(stop)], (text, stop)
    assert kept[0].finish_reason == "stop" and kept[0].stop_reason == stop
