"""How to pick the next token and when to stop: the per-request knobs, shaped like vLLM's.

Every field keeps vLLM's name, default and meaning, so code written for `vllm.SamplingParams`
runs unchanged. Bad values are refused here, when the request arrives, rather than deep inside
the sampler, and the error names the field and the range it accepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from minillm.structured_output import StructuredOutputsParams

# Below this temperature sampling is indistinguishable from argmax, and dividing logits by it
# would overflow; vLLM uses the same threshold.
GREEDY_EPS = 1e-5
INT64_MAX = 2**63 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Stop strings are matched against every new piece of text of every step: bounded, so that one
# request cannot make the step slow for all the others.
MAX_STOP_STRINGS, MAX_STOP_STRING_CHARS = 64, 4096


class RequestOutputKind(Enum):
    """Which outputs `LLMEngine.step` returns for a request (vLLM's names; no DELTA here)."""

    CUMULATIVE = 0  # every step that adds a token: everything generated so far (streaming)
    FINAL_ONLY = 2  # only once the request is finished (`LLM.generate` asks for this)


@dataclass
class SamplingParams:
    """Sampling and stopping settings of one request.

    n: how many completions to generate for the prompt.
    best_of: how many to sample (None: n); the n with the highest cumulative logprob are
        returned, once all are finished (so such a request is not streamed).
    temperature: logits are divided by it; 0 (or below 1e-5) means greedy (argmax).
    top_p: keep the smallest set of top tokens whose probabilities add up to at least top_p.
    top_k: keep only the k most likely tokens; 0 or -1 disables it; a k beyond the vocabulary
        keeps all of it (as in vLLM).
    min_p: drop tokens whose probability is below min_p times the top token's.
    presence_penalty: subtracted once from the logit of every token already in the output.
    frequency_penalty: subtracted from a token's logit once per time it is in the output.
    repetition_penalty: divides positive (multiplies negative) logits of tokens seen in the
        prompt or the output; 1 disables it.
    seed: makes the request's samples reproducible, whatever else is in the batch (sample i of
        the n uses seed + i, so seed + n - 1 must fit in a signed 64-bit integer).
    stop: strings that end the completion (at most 64, each at most 4096 characters); the stop
        string itself is not returned unless include_stop_str_in_output.
    include_stop_str_in_output: keep the stop string that ended the completion in its text.
    stop_token_ids: token ids that end the completion (besides EOS).
    ignore_eos: keep generating past EOS (for benchmarks).
    max_tokens: most tokens to generate; None means up to the model's context length.
    min_tokens: EOS and stop tokens are forbidden until this many tokens are generated.
    logprobs: how many top log-probabilities to return per token, besides the chosen one's.
    prompt_logprobs: the same for every prompt token, each given the tokens before it (the
        first prompt token's entry is None). Such a request never reuses the prefix cache (as
        in vLLM): a cached block was never run through the model, so it has no logits.
    logit_bias: token id -> a bias in [-100, 100], added to that token's logit before sampling.
    truncate_prompt_tokens: keep only the last k tokens of the prompt (left truncation).
    structured_outputs: a grammar the output must follow (JSON schema, regex, choice, EBNF);
        see `minillm.structured_output`.
    skip_special_tokens: leave special tokens out of the returned text.
    output_kind: when the engine reports the request (see `RequestOutputKind`).
    """

    n: int = 1
    best_of: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    truncate_prompt_tokens: int | None = None
    structured_outputs: StructuredOutputsParams | None = None
    skip_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self):
        # Normalise once so the engine only ever sees lists.
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self._validate_sampling()
        self._validate_lengths()

    @property
    def uses_token_history(self) -> bool:
        """The sampler needs this request's prompt and output tokens (penalties, min_tokens)."""
        return (self.repetition_penalty != 1 or self.frequency_penalty != 0
                or self.presence_penalty != 0 or self.min_tokens > 0)

    @property
    def num_samples(self) -> int:
        """How many sequences the engine runs for the request: best_of if given, else n."""
        return self.best_of or self.n

    @property
    def ranks_samples(self) -> bool:
        """True when more samples run than are returned: each needs its cumulative logprob."""
        return self.num_samples > self.n

    @property
    def greedy(self) -> bool:
        """True when the token is the argmax: temperature 0 (or close enough to it)."""
        return self.temperature < GREEDY_EPS

    def _validate_sampling(self):
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty"):
            value = getattr(self, name)
            # The sampler computes in float32: a value finite in Python may not be there.
            _check(abs(value) <= FLOAT32_MAX, name, value, "a finite number (in float32)")
        _check(self.n >= 1, "n", self.n, "at least 1")
        _check(self.best_of is None or self.best_of >= self.n, "best_of", self.best_of,
               f"None or at least n ({self.n})")
        _check(self.temperature >= 0, "temperature", self.temperature, "at least 0")
        _check(0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1]")
        _check(-1 <= self.top_k <= INT64_MAX, "top_k", self.top_k,
               "-1 or 0 (disabled), or at least 1")
        _check(0 <= self.min_p <= 1, "min_p", self.min_p, "in [0, 1]")
        _check(-2 <= self.presence_penalty <= 2, "presence_penalty", self.presence_penalty,
               "in [-2, 2]")
        _check(-2 <= self.frequency_penalty <= 2, "frequency_penalty", self.frequency_penalty,
               "in [-2, 2]")
        _check(np.float32(self.repetition_penalty) > 0, "repetition_penalty",
               self.repetition_penalty, "greater than 0 (and not 0 once rounded to float32)")
        last = self.num_samples - 1
        _check(self.seed is None or -INT64_MAX - 1 <= self.seed <= INT64_MAX - last,
               "seed", self.seed, f"a signed 64-bit integer (with {last + 1} samples: at most "
               f"{INT64_MAX - last})")
        _check(self.logprobs is None or self.logprobs >= 0, "logprobs", self.logprobs,
               "None or at least 0")
        _check(self.prompt_logprobs is None or self.prompt_logprobs >= 0, "prompt_logprobs",
               self.prompt_logprobs, "None or at least 0")
        bias = self.logit_bias or {}
        _check(all(isinstance(t, int) and isinstance(b, (int, float)) and -100 <= b <= 100
                   for t, b in bias.items()),
               "logit_bias", bias, "a dict of integer token ids to biases in [-100, 100]")
        _check(self.structured_outputs is None
               or isinstance(self.structured_outputs, StructuredOutputsParams),
               "structured_outputs", self.structured_outputs, "a StructuredOutputsParams")
        # A finished grammar allows only the end token, which min_tokens would forbid: the row
        # would have no token left to sample.
        _check(self.structured_outputs is None or self.min_tokens == 0, "min_tokens",
               self.min_tokens, "0 when structured_outputs is set")

    def _validate_lengths(self):
        truncate = self.truncate_prompt_tokens
        _check(truncate is None or (isinstance(truncate, int) and truncate >= 1),
               "truncate_prompt_tokens", truncate, "None or an integer of at least 1")
        _check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", self.max_tokens,
               "None or at least 1")
        _check(self.min_tokens >= 0, "min_tokens", self.min_tokens, "at least 0")
        _check(self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
               self.min_tokens, f"at most max_tokens ({self.max_tokens})")
        _check(len(self.stop) <= MAX_STOP_STRINGS, "stop", f"{len(self.stop)} strings",
               f"at most {MAX_STOP_STRINGS} strings")
        _check(all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_STRING_CHARS for s in self.stop),
               "stop", [s[:20] for s in self.stop],
               f"non-empty strings of at most {MAX_STOP_STRING_CHARS} characters")


def _check(ok: bool, field: str, value, allowed: str):
    if not ok:
        raise ValueError(f"{field} must be {allowed}, got {value!r}")
