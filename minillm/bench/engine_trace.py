"""Small helpers of chapter 7 (the engine): a step's objects as text, the sampler stage by stage,
a stop string's held-back tail, and the reference tokens of `transformers`.

They only read the engine's real objects and call its real functions (`minillm.sampling`,
`IncrementalDetokenizer`); nothing here is a second copy of the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minillm.engine.detokenizer import IncrementalDetokenizer
from minillm.sampling import (apply_min_p, apply_penalties, apply_temperature,
                              apply_top_k_top_p)


def side_by_side(left: str, right: str, width: int = 50, titles: tuple[str, str] = ("", "")) -> str:
    """Two texts in two columns of `width` characters (longer lines are cut with "…")."""
    def fit(line: str) -> str:
        return line if len(line) <= width else line[:width - 1] + "…"

    lefts, rights = left.splitlines(), right.splitlines()
    rows = [(titles[0], titles[1]), ("-" * width, "-" * width)] if any(titles) else []
    rows += [(lefts[i] if i < len(lefts) else "", rights[i] if i < len(rights) else "")
             for i in range(max(len(lefts), len(rights)))]
    return "\n".join(f"{fit(a):<{width}} │ {fit(b)}".rstrip() for a, b in rows)


def sequence_state(seq) -> dict:
    """What the scheduler books about a sequence, as plain values (to compare before/after)."""
    return {"status": seq.status.name, "computed": seq.num_computed_tokens,
            "tokens": seq.num_tokens, "outputs": list(seq.output_token_ids),
            "blocks": list(seq.block_table), "finish": seq.finish_reason}


def state_changes(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """One line per sequence and field that changed: `name.field: old -> new`."""
    return [f"{name}.{key}: {old[key]} -> {after[name][key]}"
            for name, old in before.items() for key in old if old[key] != after[name][key]]


@dataclass
class Stage:
    name: str
    probs: torch.Tensor  # the distribution after this stage ([vocab], float32)

    @property
    def kept(self) -> int:
        return int((self.probs > 0).sum())


def sampler_stages(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                   frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                   prompt_ids: list[int] = (), output_ids: list[int] = ()) -> list[Stage]:
    """One row of logits ([vocab]) through the sampler's stages, in `minillm.sampling.sample`'s
    order, with minillm's own functions: the distribution after each stage."""
    row = logits.float()[None]
    stages = [Stage("raw", row.softmax(-1)[0])]
    row = apply_penalties(row, [list(prompt_ids)], [list(output_ids)],
                          torch.tensor([repetition_penalty]), torch.tensor([frequency_penalty]),
                          torch.tensor([presence_penalty]))
    stages.append(Stage("penalties", row.softmax(-1)[0]))
    row = apply_temperature(row, torch.tensor([temperature]))
    stages.append(Stage(f"temperature {temperature:g}", row.softmax(-1)[0]))
    row = apply_top_k_top_p(row, torch.tensor([top_k]), torch.tensor([1.0]))
    stages.append(Stage(f"top-k {top_k}", row.softmax(-1)[0]))
    row = apply_top_k_top_p(row, torch.tensor([0]), torch.tensor([top_p]))
    stages.append(Stage(f"top-p {top_p:g}", row.softmax(-1)[0]))
    row = apply_min_p(row, torch.tensor([min_p]))
    stages.append(Stage(f"min-p {min_p:g}", row.softmax(-1)[0]))
    return stages


@dataclass
class DetokenizedStep:
    token_id: int
    alone: str  # the token decoded on its own
    emitted: str  # what the incremental detokenizer emitted for it
    held_back: int  # characters a stream holds back: they may become a stop string
    visible: str  # the text a stream may show after this token
    stop: str | None  # the stop string found, once found


def detokenize_steps(tokenizer, prompt_ids: list[int], output_ids: list[int],
                     stop: list[str] = ()) -> list[DetokenizedStep]:
    """Feed `output_ids` one by one to minillm's `IncrementalDetokenizer`, as the output
    processor does, and record what each token made visible."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, True, list(stop))
    steps = []
    for token in output_ids:
        emitted = detok.add(token)
        steps.append(DetokenizedStep(token, tokenizer.decode([token]), emitted,
                                     detok.stops.holdback, detok.visible_text(False),
                                     detok.stop_string))
        if detok.stop_string is not None:
            break
    return steps


@torch.inference_mode()
def transformers_greedy(path, prompts: list[list[int]], max_new_tokens: int):
    """Per prompt, alone, through `transformers`' own generate in float32: the greedy tokens
    and each one's log-probability (the reference the engine must match)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None,
                              pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    results = []
    for p in prompts:
        out = model.generate(torch.tensor([p]), generation_config=config)
        tokens = out.sequences[0, len(p):].tolist()
        results.append((tokens, [float(torch.log_softmax(s[0], -1)[t])
                                 for s, t in zip(out.scores, tokens)]))
    return results
