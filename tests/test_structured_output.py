"""Structured outputs with xgrammar: the bundled model's text follows the grammar, and the rows
without one are untouched."""
import json
import re

import jsonschema
import pytest
import torch

from minillm import LLM, SamplingParams
from minillm.sampling import AllowedTokens, apply_allowed_tokens
from minillm.structured_output import StructuredOutputsParams

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "pets": {"type": "array", "items": {"enum": ["cat", "dog"]},
                                  "maxItems": 3}},
          "required": ["name", "age", "pets"], "additionalProperties": False}
EMAIL = r"[a-z]{3,8}@[a-z]{2,5}\.(com|org)"
CHOICES = ["yes", "no", "it depends"]


@pytest.fixture(scope="module")
def llm():
    return LLM()  # the bundled model: it cannot write valid JSON on its own


def texts(outputs):
    return [o.outputs[0].text for o in outputs]


def test_json_regex_and_choice_outputs_are_valid(llm):
    params = [
        SamplingParams(temperature=0, max_tokens=80, structured_outputs=StructuredOutputsParams(
            json=SCHEMA)),
        SamplingParams(temperature=1.0, seed=3, max_tokens=80,
                       structured_outputs=StructuredOutputsParams(json=json.dumps(SCHEMA))),
        SamplingParams(temperature=0, max_tokens=40,
                       structured_outputs=StructuredOutputsParams(regex=EMAIL)),
        SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=20,
                       structured_outputs=StructuredOutputsParams(choice=CHOICES)),
        SamplingParams(temperature=0, max_tokens=60,
                       structured_outputs=StructuredOutputsParams(json_object=True)),
    ]
    prompts = ["A person as JSON:", "Another person:", "Her email address is", "Is it raining?",
               "Data:"]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    for out in outputs[:2]:
        jsonschema.validate(json.loads(out.outputs[0].text), SCHEMA)
    assert re.fullmatch(EMAIL, outputs[2].outputs[0].text), outputs[2].outputs[0].text
    assert all(c.text in CHOICES for c in outputs[3].outputs), [c.text for c in outputs[3].outputs]
    # Any object: free text inside it may run to max_tokens; a finished one parses.
    anything = outputs[4].outputs[0]
    assert anything.text.startswith("{"), anything.text
    if anything.finish_reason == "stop":
        assert isinstance(json.loads(anything.text), dict), anything.text
    for out in outputs[:4]:
        assert all(c.finish_reason == "stop" for c in out.outputs), out.request_id


def test_a_terminated_grammar_ends_the_sequence(llm):
    """With ignore_eos the end token does not stop the sequence; the grammar's end does."""
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                            structured_outputs=StructuredOutputsParams(choice=CHOICES))
    out = llm.generate("Is it raining?", params, use_tqdm=False)[0].outputs[0]
    assert out.text in CHOICES and out.finish_reason == "stop", out
    assert len(out.token_ids) < 30


def test_rows_without_a_grammar_get_the_tokens_they_get_alone(llm):
    prompts = ["Once upon a time", "The cat", "In the morning", "She said"]
    plain = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    alone = texts(llm.generate(prompts[1::2], plain, use_tqdm=False))
    guided = SamplingParams(temperature=0, max_tokens=80,
                            structured_outputs=StructuredOutputsParams(json=SCHEMA))
    mixed = llm.generate(prompts, [guided, plain, guided, plain], use_tqdm=False)
    assert texts(mixed)[1::2] == alone
    for out in mixed[0::2]:
        json.loads(out.outputs[0].text)


def test_bitmask_is_applied_per_row():
    """Against a mask built bit by bit in Python: only the listed rows change."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 70, generator=gen)
    bitmask = torch.randint(-2**31, 2**31 - 1, (1, 3), generator=gen, dtype=torch.int64)
    bitmask = bitmask.to(torch.int32)
    masked = apply_allowed_tokens(logits, AllowedTokens([1], bitmask))
    words = [w & 0xFFFFFFFF for w in bitmask[0].tolist()]
    for token in range(70):
        allowed = (words[token // 32] >> (token % 32)) & 1
        expected = logits[1, token] if allowed else float("-inf")
        assert masked[1, token] == expected, token
    assert torch.equal(masked[[0, 2]], logits[[0, 2]])


@pytest.mark.parametrize("kinds", [{}, {"regex": "a", "choice": ["b"]}, {"choice": []},
                                   {"choice": ["a", 1]}])
def test_exactly_one_valid_constraint(kinds):
    with pytest.raises(ValueError, match="structured_outputs"):
        StructuredOutputsParams(**kinds)


@pytest.mark.parametrize("kinds", [{"regex": "([a-z"}, {"json": "{not json"},
                                   {"json": {"type": 5}}, {"grammar": "root ::= "}])
def test_a_grammar_that_does_not_compile_is_refused_and_the_engine_stays_healthy(llm, kinds):
    params = SamplingParams(structured_outputs=StructuredOutputsParams(**kinds))
    with pytest.raises(ValueError, match=f"structured_outputs.{next(iter(kinds))}"):
        llm.engine.add_request("bad", "hello", params)
    assert not llm.engine.requests and not llm.engine.has_unfinished_requests()
    assert llm.generate("hello", SamplingParams(max_tokens=2), use_tqdm=False)[0].outputs[0].text


def test_min_tokens_with_a_grammar_is_refused():
    """A finished grammar allows only the end token, which min_tokens forbids."""
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=2, structured_outputs=StructuredOutputsParams(choice=["a"]))
