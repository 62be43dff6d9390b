"""`SamplingParams.truncate_prompt_tokens` (vLLM's): only the prompt's last k tokens are used."""
import pytest
from checkpoints import prompts_of_lengths

from minillm import LLM, SamplingParams

GREEDY = dict(temperature=0, max_tokens=6, ignore_eos=True)


def test_the_last_k_tokens_are_the_prompt(llama_checkpoint):
    llm = LLM(str(llama_checkpoint), dtype="float32")
    long_prompt, short_prompt = prompts_of_lengths(7, [50, 8])
    truncated = llm.generate(
        [{"prompt_token_ids": long_prompt}, {"prompt_token_ids": short_prompt}],
        SamplingParams(**GREEDY, truncate_prompt_tokens=10), use_tqdm=False)
    tail = llm.generate({"prompt_token_ids": long_prompt[-10:]}, SamplingParams(**GREEDY),
                        use_tqdm=False)[0]
    assert truncated[0].prompt_token_ids == long_prompt[-10:]
    assert truncated[0].outputs[0].token_ids == tail.outputs[0].token_ids
    assert truncated[1].prompt_token_ids == short_prompt  # shorter than k: untouched


@pytest.mark.parametrize("value", [0, -1, 2.5, "3"])
def test_bad_values_are_refused(value):
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        SamplingParams(truncate_prompt_tokens=value)
