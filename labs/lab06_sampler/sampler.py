"""Lab 6: the sampler. Fill in the stubs, then run `make grade LAB=lab06`.

The model gives one row of logits per sequence ([num_rows, vocab], float32); the sampler turns
each row into one token. The reference is `minillm/sampling.py`; `sample` (task 6.6) applies the
steps in this order, the same as vLLM v1:

0. rows with a grammar (structured outputs, given: `apply_allowed_tokens`) lose the tokens it
   forbids;
1. logprobs from the raw distribution, `log_softmax(logits)`, before anything else changes it;
2. min_tokens (6.1): EOS and stop tokens forbidden while the output is too short; then each
   row's `logit_bias` is added (given: `apply_logit_bias`);
3. penalties (6.2): repetition (prompt and output), then frequency and presence (output only);
4. greedy rows (temperature 0) take the argmax;
5. the other rows: temperature (6.3), then top-k and top-p (6.4), then min-p (6.5);
6. each row draws from what is left with its own `torch.Generator`.

Every function works on each row separately, with one parameter value per row, so a row's
token never depends on the other rows of the batch. A function returns a new tensor (or its
input untouched); it never changes the tensor it was given.
"""
from __future__ import annotations

import torch

# Given: the result type, the logprob lists, the grammar mask and logit_bias.
from minillm.sampling import (AllowedTokens, SamplerOutput, apply_allowed_tokens,
                              apply_logit_bias, top_logprobs)
from minillm.sampling_params import SamplingParams

# Cumulative sums in float32 are off by about 1e-7; a set whose mass reaches top_p up to this
# much counts as having reached it, so a token exactly on the boundary is not let in by rounding.
TOP_P_TOLERANCE = 1e-6


def apply_min_tokens(logits: torch.Tensor, params: list[SamplingParams],
                     output_ids: list[list[int]], eos_token_ids: list[int]) -> torch.Tensor:
    """Forbid EOS and each row's stop tokens while the row has fewer than `min_tokens` outputs.

    Row i has `params[i].min_tokens` and `params[i].stop_token_ids`, and has generated
    `output_ids[i]` so far. While `len(output_ids[i]) < params[i].min_tokens`, every id in
    `eos_token_ids` and in the row's `stop_token_ids` gets logit -inf (even with `ignore_eos`:
    min_tokens promises that many tokens). Ids outside the vocabulary are skipped: they can
    never be sampled. Other rows are left exactly as they are.

    Hint: clone before writing, then `logits[row, ids] = float("-inf")`.
    """
    raise NotImplementedError("Task 6.1: mask EOS and stop tokens below min_tokens")


def token_counts(token_ids: list[list[int]], vocab: int, device=None) -> torch.Tensor:
    """How often each token id occurs in each row: [num_rows, vocab] float32.

    Rows may have different lengths, including 0. Example (vocab 4): [[1, 1, 3], []] ->
    [[0, 2, 0, 1], [0, 0, 0, 0]].

    Hint: `Tensor.scatter_add_` counts a whole padded batch at once; pad with an extra column.
    """
    raise NotImplementedError("Task 6.2: count each token id per row")


def apply_penalties(logits: torch.Tensor, prompt_ids: list[list[int]],
                    output_ids: list[list[int]], repetition: torch.Tensor,
                    frequency: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """Penalise tokens already seen, with one penalty value per row in each tensor ([num_rows]).

    Repetition (CTRL paper, as in vLLM): a token seen in the prompt *or* the output has its logit
    divided by the penalty if the logit is positive and multiplied by it otherwise, so a penalty
    above 1 always makes the token less likely. Then frequency and presence (OpenAI), over the
    *output* tokens only: `logit -= frequency * count + presence * (count > 0)`.

    Hint: `token_counts` of the prompts and of the outputs, then `torch.where`.
    """
    raise NotImplementedError("Task 6.2: repetition, frequency and presence penalties")


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row by its temperature ([num_rows]); below 1 sharpens, above 1 flattens."""
    raise NotImplementedError("Task 6.3: scale each row by its temperature")


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor,
                      top_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf every token outside each row's top-k, then outside its top-p nucleus.

    top_k ([num_rows], long): keep the k largest logits; 0 or -1 (or k >= vocab) keeps all.
    top_p ([num_rows], float): of what top-k kept, renormalised, keep the smallest set of most
    likely tokens whose probabilities add up to at least top_p; the most likely token is always
    kept and top_p = 1 keeps everything. Example: probabilities [0.5, 0.25, 0.125, 0.125] with
    top_p 0.75 keep the first two (they reach 0.75 exactly); with top_p 0.7 also the first two.

    Hint: one descending sort serves both. In sorted order a token is dropped once the tokens
    *before* it already reach top_p (allow TOP_P_TOLERANCE for float32 rounding); scatter the
    sorted row back into vocabulary order at the end.
    """
    raise NotImplementedError("Task 6.4: top-k, then top-p over what top-k kept")


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf the tokens whose probability is below min_p ([num_rows]) times the top one's.

    Probabilities are `softmax(logits)` of the row as given; a token with exactly
    min_p * (top probability) stays, so min_p = 1 keeps the most likely token (and its ties).
    """
    raise NotImplementedError("Task 6.5: drop tokens below min_p times the top probability")


@torch.inference_mode()
def sample(logits: torch.Tensor, params: list[SamplingParams], prompt_ids: list[list[int]],
           output_ids: list[list[int]], generators: list[torch.Generator],
           eos_token_ids: list[int], allowed: AllowedTokens | None = None) -> SamplerOutput:
    """Choose one token for each row of `logits` ([num_rows, vocab], float32).

    Row i belongs to a sequence with `params[i]`, prompt `prompt_ids[i]` and the tokens it has
    generated so far, `output_ids[i]`; `generators[i]` is the only source of its randomness.
    Apply steps 0-6 of this module's docstring with your functions above:

    - if `allowed` is not None, `apply_allowed_tokens(logits, allowed)` first; after min_tokens,
      `apply_logit_bias(logits, params)` if some row has a `logit_bias`;
    - logprobs only if some row has `params[i].logprobs` set (not None): `log_softmax` of the
      logits as given; `SamplerOutput.logprobs[i]` is the chosen token's, `ranks[i]` its rank
      (1 + how many tokens have a larger logprob), `top_logprobs(raw_logprobs, params)` the
      lists; rows without `logprobs` get None in all three. If no row asks, all are None and
      `ranks` may be left out.
    - penalty tensors from `params[i].repetition_penalty`, `.frequency_penalty`,
      `.presence_penalty` (float32, one value per row);
    - a greedy row (`params[i].greedy`) takes the argmax of its penalised logits;
    - a sampled row: temperature, top-k/top-p, min-p, `softmax`, then exactly
      `int(torch.multinomial(probs_row, 1, generator=generators[i]))`, so a seeded request
      gets the same tokens as in minillm. Temperature or penalties can push a logit to +inf;
      clamp to `torch.finfo(torch.float32).max` after the temperature so the softmax stays a
      distribution.
    """
    raise NotImplementedError("Task 6.6: the whole sampler, seeded per row")
