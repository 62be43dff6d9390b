"""`LLM`: the offline API, shaped like vLLM's, so code written for one runs on the other."""
from __future__ import annotations

import itertools
from dataclasses import fields, replace

from tqdm.auto import tqdm

from minillm.config import EngineConfig
from minillm.engine.block_manager import BlockManager
from minillm.engine.llm_engine import LLMEngine
from minillm.engine.scheduler import Scheduler
from minillm.outputs import RequestOutput
from minillm.sampling_params import RequestOutputKind, SamplingParams


class LLM:
    """Load a model once, then generate for many prompts with continuous batching.

    >>> llm = LLM()                      # the bundled minillm-tiny model
    >>> llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=20))
    """

    def __init__(self, model: str | None = None, *, scheduler_cls: type[Scheduler] = Scheduler,
                 block_manager_cls: type[BlockManager] = BlockManager, **kwargs):
        """`model`: a Hugging Face checkpoint folder (None: the bundled model). Every other
        setting is a field of `EngineConfig`, by the same name (vLLM's): `dtype`,
        `max_model_len`, `max_num_seqs`, `enable_prefix_caching`, `attention_backend`, ...

        `scheduler_cls`, `block_manager_cls`: the labs' grading hook, passed to `LLMEngine`
        (a learner's `Scheduler` or `BlockManager` in place of minillm's)."""
        unknown = sorted(set(kwargs) - {f.name for f in fields(EngineConfig)})
        if unknown:
            raise TypeError(f"LLM() got unknown settings {unknown}; the settings are the fields "
                            f"of minillm.config.EngineConfig")
        self.engine = LLMEngine(EngineConfig(model=model, **kwargs), scheduler_cls=scheduler_cls,
                                block_manager_cls=block_manager_cls)
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts, sampling_params: SamplingParams | list | None = None,
                 use_tqdm: bool = True, priority: list[int] | None = None) -> list[RequestOutput]:
        """Complete each prompt (a string or `{"prompt_token_ids": [...]}`); outputs keep the
        prompts' order."""
        prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        params = (sampling_params if isinstance(sampling_params, list)
                  else [sampling_params or SamplingParams()] * len(prompts))
        priority = [0] * len(prompts) if priority is None else list(priority)
        for name, values in (("sampling params", params), ("priorities", priority)):
            if len(values) != len(prompts):
                raise ValueError(f"{len(prompts)} prompts but {len(values)} {name}")
        # Only the finished outputs are kept: the engine need not build the others.
        params = [replace(p, output_kind=RequestOutputKind.FINAL_ONLY) for p in params]
        ids = self._add_all(prompts, params, priority)
        return self._run(ids, use_tqdm)

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | list | None = None, use_tqdm: bool = True,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation (or a list of them), then
        generate."""
        conversations = [messages] if isinstance(messages[0], dict) else messages
        tokenizer = self.get_tokenizer()
        prompts = []
        for conversation in conversations:
            text = tokenizer.apply_chat_template(conversation, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
            prompts.append({"prompt": text,
                            "prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)})
        return self.generate(prompts, sampling_params, use_tqdm)

    def _add_all(self, prompts, params, priority) -> list[str]:
        """Add every request, or none: a bad one aborts those already added and raises."""
        added = []
        try:
            for prompt, p, prio in zip(prompts, params, priority):
                request_id = str(next(self._ids))
                self.engine.add_request(request_id, prompt, p, prio)
                added.append(request_id)
        except ValueError:
            for request_id in added:
                self.engine.abort_request(request_id)
            raise
        return added

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        with tqdm(total=len(request_ids), desc="Generating", disable=not use_tqdm) as bar:
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        bar.update(1)
        return [finished[request_id] for request_id in request_ids]
