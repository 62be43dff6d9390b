"""The engine loop a server drives: `add_request`, `step`, `abort_request`.

One step of continuous batching is a pipeline in which each object owns its state:

    Scheduler.schedule() ──► SchedulerOutput ──► ModelRunner.execute() ──► SamplerOutput
                                                                                  │
    RequestOutput ◄── OutputProcessor ◄── Scheduler.update_from_output() ◄────────┘
"""
from __future__ import annotations

import logging
import time

import torch

from minillm.attention import get_backend
from minillm.config import EngineConfig
from minillm.engine.block_manager import BlockManager, blocks_for
from minillm.engine.detokenizer import IncrementalDetokenizer
from minillm.engine.kv_events import create_publisher
from minillm.engine.model_runner import ModelRunner, PagedKVCache
from minillm.engine.output_processor import OutputProcessor, Request
from minillm.engine.scheduler import Scheduler
from minillm.engine.sequence import Sequence
from minillm.engine.stats import EngineStats
from minillm.model import load_model, load_tokenizer
from minillm.model.int8_linear import quantize_linear_layers
from minillm.model.packed_linear import can_pack, pack_linear_layers
from minillm.outputs import RequestMetrics, RequestOutput
from minillm.sampling_params import SamplingParams
from minillm.structured_output import GrammarCompiler

CPU_KV_CACHE_BYTES = 1 << 30
logger = logging.getLogger("minillm")


class LLMEngine:
    def __init__(self, config: EngineConfig, *, scheduler_cls: type[Scheduler] = Scheduler,
                 block_manager_cls: type[BlockManager] = BlockManager):
        """`scheduler_cls` and `block_manager_cls` are the grading hook of the labs: another
        class with the same constructor and methods (a learner's) runs in place of minillm's.
        They are not engine settings (no `EngineConfig` field, no CLI flag)."""
        self.config = config
        device = config.device if config.device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.model_path = str(config.model or default_model())
        self.model = load_model(self.model_path, config.dtype, self.device)
        if config.quantization == "int8":
            quantize_linear_layers(self.model)
        elif can_pack(self.model):  # on a CPU: oneDNN linear layers, packed once
            pack_linear_layers(self.model)
        self.tokenizer = load_tokenizer(self.model_path)
        cfg = self.model.config
        self.max_model_len = config.max_model_len or min(cfg.max_position_embeddings, 4096)
        self.eos_token_ids = cfg.eos_token_ids or [self.tokenizer.eos_token_id]
        num_blocks, num_cpu_blocks = self._count_blocks()
        self.block_manager = block_manager_cls(num_blocks, config.block_size,
                                               config.enable_prefix_caching, num_cpu_blocks)
        self.scheduler = scheduler_cls(config, self.block_manager, self.eos_token_ids,
                                       self.max_model_len)
        self.kv_events = create_publisher(config.kv_events_config)  # None: events off
        if self.kv_events:
            self.block_manager.kv_events = []  # the block manager records them from now on
        self.backend = get_backend(config.attention_backend, self.device,
                                   dtype=self.model.dtype, head_dim=cfg.head_dim,
                                   block_size=config.block_size)
        self.cache = PagedKVCache(self.model, num_blocks, config.block_size, num_cpu_blocks,
                                  self.backend)
        self.runner = ModelRunner(self.model, self.cache, config.block_size, self.eos_token_ids)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.grammars = GrammarCompiler(self.tokenizer, cfg.vocab_size, self.eos_token_ids)
        self.stats = EngineStats(num_blocks=num_blocks)
        self._seed_source = torch.Generator().manual_seed(config.seed)

    # -- memory --------------------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        """K and V of one block, over all layers."""
        cfg = self.model.config
        elem = self.model.dtype.itemsize
        return 2 * cfg.num_layers * self.config.block_size * cfg.num_kv_heads * cfg.head_dim * elem

    def _count_blocks(self) -> tuple[int, int]:
        cfg = self.config
        most_useful = cfg.max_num_seqs * blocks_for(self.max_model_len, cfg.block_size)
        if cfg.num_gpu_blocks_override:
            num_blocks = cfg.num_gpu_blocks_override
        else:
            num_blocks = min(self._kv_budget() // self.block_bytes, most_useful)
        if num_blocks < blocks_for(self.max_model_len, cfg.block_size):
            raise ValueError(f"{num_blocks} KV blocks of {cfg.block_size} tokens cannot hold one "
                             f"sequence of max_model_len={self.max_model_len} tokens: give the "
                             f"KV cache more memory or lower max_model_len")
        # The CPU pool for swapped-out sequences exists only when preemption swaps, and is never
        # larger than what the running sequences could hand it.
        swap_blocks = int(cfg.swap_space * (1 << 30)) // self.block_bytes
        num_cpu_blocks = min(swap_blocks, num_blocks) if cfg.preemption_mode == "swap" else 0
        logger.info("KV cache: %d blocks of %d tokens (%.1f MiB), %d CPU blocks for swapping",
                    num_blocks, cfg.block_size, num_blocks * self.block_bytes / 2**20,
                    num_cpu_blocks)
        return num_blocks, num_cpu_blocks

    def _kv_budget(self) -> int:
        """On GPU: `gpu_memory_utilization` of the card minus what is already used (weights);
        on CPU an explicit budget."""
        if self.config.kv_cache_memory_bytes:
            return self.config.kv_cache_memory_bytes
        if self.device.type != "cuda":
            return CPU_KV_CACHE_BYTES
        free, total = torch.cuda.mem_get_info(self.device)
        activations = self.config.max_num_batched_tokens * (
            self.model.config.vocab_size + 16 * self.model.config.hidden_size) * 4  # rough bound
        return int(total * self.config.gpu_memory_utilization - (total - free) - activations)

    # -- requests ------------------------------------------------------------------------------
    @property
    def requests(self) -> dict[str, Request]:
        """The unfinished requests, by id."""
        return self.output_processor.requests

    def add_request(self, request_id: str, prompt: str | dict | list[int],
                    params: SamplingParams | None = None, priority: int = 0,
                    arrival_time: float | None = None) -> None:
        """Queue a request; a bad one raises ValueError and leaves the engine untouched."""
        params = params or SamplingParams()
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, ids = self._tokenize(prompt)
        if params.truncate_prompt_tokens is not None:  # keep the end: the part next to the output
            ids = ids[-params.truncate_prompt_tokens:]
        self._validate(ids, params)
        metrics = RequestMetrics(arrival_time or time.monotonic())
        seqs = [self._new_sequence(request_id, ids, params, index, priority, metrics.arrival_time)
                for index in range(params.num_samples)]
        seqs[0].forks = seqs[1:]
        self.output_processor.add(Request(request_id, text, ids, params, metrics, seqs))
        self.scheduler.add(seqs[0])

    def _tokenize(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return prompt.get("prompt"), list(prompt["prompt_token_ids"])
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return None, list(prompt)
        raise ValueError("a prompt is a string, a list of token ids or "
                         "{'prompt_token_ids': [...]}")

    def _validate(self, ids: list[int], params: SamplingParams) -> None:
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt is {len(ids)} tokens long; this model's maximum "
                             f"context length is {self.max_model_len} tokens, prompt and output "
                             f"together")
        vocab = self.model.config.vocab_size
        bad = [t for t in ids if not (isinstance(t, int) and 0 <= t < vocab)]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        bad = [t for t in params.logit_bias or {} if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"logit_bias token ids {bad[:5]} are outside the vocabulary "
                             f"[0, {vocab})")

    def _new_sequence(self, request_id: str, ids: list[int], params: SamplingParams, index: int,
                      priority: int, arrival_time: float) -> Sequence:
        """Sample `index` of a request, with its own random generator (seed + index if seeded),
        detokenizer and grammar matcher (structured outputs; a bad grammar raises here, before
        anything is queued)."""
        seed = (params.seed + index if params.seed is not None
                else int(torch.randint(0, 2**62, (1,), generator=self._seed_source)))
        seq = Sequence(ids, self.config.block_size, params, request_id, index, priority,
                       arrival_time, torch.Generator(self.device).manual_seed(seed),
                       IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens,
                                              params.stop, params.include_stop_str_in_output))
        if params.structured_outputs is not None:
            seq.grammar = self.grammars.matcher(params.structured_outputs)
        return seq

    def abort_request(self, request_id: str) -> None:
        """Stop a request wherever it is (waiting, running, swapped) and free its blocks."""
        request = self.output_processor.abort(request_id)
        for seq in request.seqs if request else []:
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One iteration of continuous batching. Returns the requests that made progress."""
        started = time.perf_counter()
        scheduled = self.scheduler.schedule()
        allowed = self.output_processor.allowed_tokens(scheduled.sampled_seqs,
                                                       self.grammars.vocab_size)
        sampled = self.runner.execute(scheduled, allowed)
        self.scheduler.update_from_output(scheduled, sampled.token_ids)
        for seq in self.output_processor.process_tokens(scheduled, sampled):
            self.scheduler.finish(seq, "stop")  # a stop string, or its grammar ended
        self.stats.record(self.scheduler.make_stats(), scheduled.num_tokens,
                          time.perf_counter() - started if scheduled.seqs else 0.0)
        if self.kv_events:
            self.kv_events.publish(self.block_manager.take_kv_events())
        return self.output_processor.make_outputs(scheduled.sampled_seqs)


def default_model() -> str:
    from minillm.assets import DEFAULT_MODEL
    return str(DEFAULT_MODEL)
