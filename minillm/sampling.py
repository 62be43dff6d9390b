"""The sampler: from one row of logits per sequence to one chosen token per sequence.

`sample` applies, in this order (the same as vLLM v1):

0. rows with a grammar (structured outputs): every token the grammar forbids gets -inf, so the
   logprobs below are those of the masked distribution, as in vLLM;
1. log-probabilities are read from the raw model distribution, `log_softmax(logits)`, before
   any of the steps below change it (only if some row asks for `logprobs`: as in vLLM, a
   request without them gets no logprob and no cumulative logprob);
2. min_tokens: while a sequence has fewer outputs than `min_tokens`, EOS and its stop tokens
   get -inf, so it cannot end early; then each row's `logit_bias` is added;
3. penalties: repetition (prompt and output tokens), then frequency and presence (output tokens);
4. greedy rows take the argmax;
5. the other rows: temperature, then top-k, then top-p, then min-p;
6. each row draws from what is left with its own `torch.Generator`.

Step 6 is why a seeded request is reproducible whatever else is in the batch: a row's random
numbers come from its generator alone, and every step before it works on each row separately.
Each step is a small function of its own, so a test or a chapter can call it directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from minillm.sampling_params import SamplingParams

# Cumulative sums in float32 are off by about 1e-7; a set whose mass reaches top_p up to this
# much counts as having reached it, so a token exactly on the boundary is not let in by rounding.
TOP_P_TOLERANCE = 1e-6


@dataclass
class SamplerOutput:
    """What `sample` chose, one entry per row."""

    token_ids: list[int]  # one chosen token per row
    logprobs: list[float | None]  # the chosen token's raw logprob; None without `logprobs`
    top_logprobs: list[dict[int, float] | None]  # the top-`params.logprobs` tokens, best first
    ranks: list[int | None] | None = None  # the chosen token's rank (1 = most likely)
    # request id -> the prompt tokens scored this step (requests with `prompt_logprobs` only)
    prompt_logprobs: dict[str, PromptLogprobs] = field(default_factory=dict)


@dataclass
class PromptLogprobs:
    """How likely the model found a run of prompt tokens, each given the tokens before it."""

    start: int  # the prompt position of the first token scored
    logprobs: list[float]  # per token: its logprob
    ranks: list[int]  # ...its rank (1 = most likely)
    top_logprobs: list[dict[int, float]]  # ...and the top-k tokens at its position, best first


def score_prompt(logits: torch.Tensor, next_ids: list[int], k: int, start: int) -> PromptLogprobs:
    """Row i of `logits` is the model's prediction after prompt position start - 1 + i;
    `next_ids[i]` is the prompt token that actually followed."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, torch.tensor(next_ids, device=logits.device)[:, None])
    ranks = ((logprobs > chosen).sum(dim=1) + 1).tolist()
    values, ids = logprobs.topk(min(k, logprobs.shape[1]), dim=-1)
    top = [dict(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    return PromptLogprobs(start, chosen[:, 0].tolist(), ranks, top)


@dataclass
class AllowedTokens:
    """The grammar masks of the rows that have one (the other rows pay nothing)."""

    rows: list[int]
    bitmask: torch.Tensor  # [len(rows), ceil(vocab / 32)] int32: bit t set = token t allowed


@torch.inference_mode()
def sample(logits: torch.Tensor, params: list[SamplingParams], prompt_ids: list[list[int]],
           output_ids: list[list[int]], generators: list[torch.Generator],
           eos_token_ids: list[int], allowed: AllowedTokens | None = None) -> SamplerOutput:
    """Choose one token for each row of `logits` ([num_rows, vocab], float32).

    Row i belongs to a sequence with `params[i]`, prompt `prompt_ids[i]` and the tokens it has
    generated so far, `output_ids[i]`; `generators[i]` is the only source of its randomness.
    """
    logits = logits.float()
    if allowed is not None:
        logits = apply_allowed_tokens(logits, allowed)
    wanted = [p.logprobs is not None or p.ranks_samples for p in params]  # best_of ranks by them
    raw_logprobs = torch.log_softmax(logits, dim=-1) if any(wanted) else None
    logits = apply_min_tokens(logits, params, output_ids, eos_token_ids)
    if any(p.logit_bias for p in params):
        logits = apply_logit_bias(logits, params)
    if any(p.repetition_penalty != 1 or p.frequency_penalty or p.presence_penalty for p in params):
        logits = apply_penalties(logits, prompt_ids, output_ids, *_penalty_tensors(params, logits))
    greedy_ids = logits.argmax(dim=-1).tolist()
    probs = None if all(p.greedy for p in params) else _sampling_probs(logits, params)
    token_ids = [greedy_ids[row] if p.greedy else _draw(probs[row], generator)
                 for row, (p, generator) in enumerate(zip(params, generators))]
    if raw_logprobs is None:
        return SamplerOutput(token_ids, [None] * len(params), [None] * len(params))
    chosen = raw_logprobs.gather(1, torch.tensor(token_ids, device=logits.device)[:, None])
    ranks = ((raw_logprobs > chosen).sum(dim=1) + 1).tolist()
    chosen = chosen[:, 0].tolist()
    return SamplerOutput(token_ids, [lp if w else None for lp, w in zip(chosen, wanted)],
                         top_logprobs(raw_logprobs, params),
                         [r if w else None for r, w in zip(ranks, wanted)])


def apply_min_tokens(logits: torch.Tensor, params: list[SamplingParams],
                     output_ids: list[list[int]], eos_token_ids: list[int]) -> torch.Tensor:
    """Forbid EOS and each row's stop tokens while the row has fewer than `min_tokens` outputs.

    Both are masked even with `ignore_eos`: min_tokens promises that many tokens of output.
    """
    rows = [row for row, (p, out) in enumerate(zip(params, output_ids)) if len(out) < p.min_tokens]
    if not rows:
        return logits  # the common case: no copy
    logits = logits.clone()
    for row in rows:
        # An id outside the vocabulary can never be sampled, so there is nothing to mask.
        banned = [t for t in [*eos_token_ids, *params[row].stop_token_ids]
                  if 0 <= t < logits.shape[1]]
        logits[row, banned] = float("-inf")
    return logits


def apply_allowed_tokens(logits: torch.Tensor, allowed: AllowedTokens) -> torch.Tensor:
    """-inf for every token whose bit is 0 in its row's bitmask."""
    vocab = logits.shape[1]
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    bits = (allowed.bitmask.to(logits.device)[:, :, None] >> shifts) & 1  # bit t%32 of word t//32
    forbidden = bits.flatten(1)[:, :vocab] == 0
    rows = torch.tensor(allowed.rows, device=logits.device)
    logits = logits.clone()
    logits[rows] = logits[rows].masked_fill(forbidden, float("-inf"))
    return logits


def apply_logit_bias(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Add each row's `logit_bias` (token id -> bias) to its logits; +100 all but forces a
    token, -100 all but bans it."""
    logits = logits.clone()
    for row, p in enumerate(params):
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), device=logits.device)
            logits[row, ids] += torch.tensor(list(p.logit_bias.values()), device=logits.device)
    return logits


def apply_penalties(logits: torch.Tensor, prompt_ids: list[list[int]],
                    output_ids: list[list[int]], repetition: torch.Tensor,
                    frequency: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """Penalise tokens already seen, with one penalty value per row in each tensor ([num_rows]).

    Repetition (CTRL paper, as in vLLM): a token seen in the prompt or the output has its logit
    divided by the penalty if positive, multiplied by it otherwise, so a penalty above 1 always
    makes it less likely. Frequency and presence (OpenAI): over output tokens only,
    `logit -= frequency * count + presence * (count > 0)`.
    """
    vocab = logits.shape[1]
    output_counts = token_counts(output_ids, vocab, logits.device)
    seen = (token_counts(prompt_ids, vocab, logits.device) > 0) | (output_counts > 0)
    factor = torch.where(seen, repetition[:, None], 1.0)
    logits = torch.where(logits > 0, logits / factor, logits * factor)
    return logits - frequency[:, None] * output_counts - presence[:, None] * (output_counts > 0)


def token_counts(token_ids: list[list[int]], vocab: int, device=None) -> torch.Tensor:
    """How often each token id occurs in each row: [num_rows, vocab] float32."""
    # Rows have different lengths: pad with an extra column `vocab`, counted and then cut off.
    longest = max((len(ids) for ids in token_ids), default=0)
    padded = torch.full((len(token_ids), longest), vocab, dtype=torch.long)
    for row, ids in enumerate(token_ids):
        padded[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    counts = torch.zeros(len(token_ids), vocab + 1, device=device)
    counts.scatter_add_(1, padded.to(device), torch.ones(padded.shape, device=device))
    return counts[:, :vocab]


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row by its temperature ([num_rows]); below 1 sharpens, above 1 flattens."""
    return logits / temperature[:, None]


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor,
                      top_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf every token outside each row's top-k, then outside its top-p nucleus.

    top_k ([num_rows], long): keep the k largest logits; 0 or -1 keeps all.
    top_p ([num_rows], float): of what top-k kept, keep the smallest set of most likely tokens
    whose probabilities add up to at least top_p; the most likely token is always kept.
    Both need the tokens in order of likelihood, so one sort serves them both.
    """
    vocab = logits.shape[1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device)
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)
    sorted_logits = sorted_logits.masked_fill(rank >= k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
    # A token is dropped once the tokens before it already reach top_p; top_p = 1 keeps all.
    reached = mass_before >= top_p[:, None] - TOP_P_TOLERANCE
    drop = reached & (rank > 0) & (top_p[:, None] < 1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf the tokens whose probability is below min_p ([num_rows]) times the top one's."""
    probs = logits.softmax(dim=-1)
    threshold = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


def top_logprobs(logprobs: torch.Tensor,
                 params: list[SamplingParams]) -> list[dict[int, float] | None]:
    """Each row's `params.logprobs` most likely tokens and their logprobs, best first."""
    k = max((p.logprobs or 0 for p in params), default=0)
    values, ids = logprobs.topk(min(k, logprobs.shape[1]), dim=-1)  # one topk for all rows
    return [None if p.logprobs is None
            else dict(zip(ids[row, :p.logprobs].tolist(), values[row, :p.logprobs].tolist()))
            for row, p in enumerate(params)]


def _penalty_tensors(params: list[SamplingParams], logits: torch.Tensor):
    return (_per_row(params, "repetition_penalty", logits),
            _per_row(params, "frequency_penalty", logits),
            _per_row(params, "presence_penalty", logits))


def _per_row(params: list[SamplingParams], field: str, logits: torch.Tensor,
             dtype=torch.float32) -> torch.Tensor:
    return torch.tensor([getattr(p, field) for p in params], dtype=dtype, device=logits.device)


def _sampling_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Step 5 for all rows at once, skipping the filters no row asked for; greedy rows get
    temperature 1 here and never use the result."""
    temperature = torch.tensor([1.0 if p.greedy else p.temperature for p in params],
                               device=logits.device)
    # Penalties and a low temperature can push a logit past float32's range; +inf would make
    # the softmax NaN for the whole row. The largest finite value keeps the order.
    logits = apply_temperature(logits, temperature).clamp(max=torch.finfo(logits.dtype).max)
    if any(p.top_k > 0 or p.top_p < 1 for p in params):
        logits = apply_top_k_top_p(logits, _per_row(params, "top_k", logits, torch.long),
                                   _per_row(params, "top_p", logits))
    if any(p.min_p > 0 for p in params):
        logits = apply_min_p(logits, _per_row(params, "min_p", logits))
    return logits.softmax(dim=-1)


def _draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Step 6 for one row: one draw from `probs`, with random numbers from this row's generator."""
    return int(torch.multinomial(probs, 1, generator=generator))
