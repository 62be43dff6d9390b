"""`GET /metrics`: the engine's state and the requests' latencies, under vLLM's metric names.

Dashboards and autoscalers written for vLLM (Grafana, KEDA, KServe) read these names. Each app
has its own `CollectorRegistry`, so two servers in one process (tests) never share counters.

- Gauges and engine counters are read from `EngineStats` when Prometheus scrapes: the engine
  already counts them, so nothing is done per step here.
- Latency histograms and `request_success` are recorded once per request, when it ends, from
  the `RequestMetrics` the engine filled in. A request's phases, as vLLM splits them:

      arrival ──queue──► first scheduled ──prefill──► first token ──decode──► last token
                         └─────────────────── inference ──────────────────────┘

- The histograms of request parameters (`n`, `max_tokens`) are recorded when a request is added.

Names, buckets and the `model_name` label are vLLM's (vLLM adds an `engine` label, the index of
one of its data-parallel engines; minillm has one engine).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from minillm.engine.stats import EngineStats
from minillm.outputs import RequestOutput
from minillm.sampling_params import SamplingParams

# vLLM's buckets (seconds), so the histograms line up with vLLM's dashboards.
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0]
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]  # also the request phases'
ITERATION_TOKENS_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
N_BUCKETS = [1, 2, 5, 10, 20]


def buckets_1_2_5(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value`: vLLM's buckets for token counts."""
    buckets, scale = [], 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return buckets
            buckets.append(mantissa * scale)
        scale *= 10


class EngineStatsCollector:
    """Turns `EngineStats` into Prometheus families at scrape time."""

    def __init__(self, stats: EngineStats, model_name: str):
        self.stats, self.model_name = stats, model_name

    def collect(self):
        s = self.stats
        yield self._family(GaugeMetricFamily, "num_requests_running",
                           "Sequences in the running batch.", s.num_running)
        yield self._family(GaugeMetricFamily, "num_requests_waiting",
                           "Sequences waiting to be scheduled.", s.num_waiting + s.num_swapped)
        yield self._family(GaugeMetricFamily, "kv_cache_usage_perc",
                           "KV-cache usage: 1 means 100 percent.", s.kv_cache_usage)
        yield self._family(CounterMetricFamily, "prefix_cache_queries",
                           "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries)
        yield self._family(CounterMetricFamily, "prefix_cache_hits",
                           "Prompt tokens found in the prefix cache.", s.prefix_cache_hits)
        yield self._family(CounterMetricFamily, "num_preemptions",
                           "Sequences preempted.", s.num_preemptions)
        yield self._family(CounterMetricFamily, "prompt_tokens",
                           "Prompt tokens prefilled.", s.prompt_tokens)
        yield self._family(CounterMetricFamily, "generation_tokens",
                           "Tokens generated.", s.generation_tokens)
        yield self._iteration_tokens(dict(s.step_tokens))  # a copy: the engine thread adds

    def _iteration_tokens(self, step_tokens: dict[int, int]) -> HistogramMetricFamily:
        """The engine counts its steps by size; here they become a histogram."""
        cumulative = [(str(float(le)), sum(c for t, c in step_tokens.items() if t <= le))
                      for le in ITERATION_TOKENS_BUCKETS]
        family = HistogramMetricFamily("vllm:iteration_tokens_total",
                                       "Tokens per engine step.", labels=["model_name"])
        family.add_metric([self.model_name], cumulative + [("+Inf", sum(step_tokens.values()))],
                          sum_value=sum(t * c for t, c in step_tokens.items()))
        return family

    def _family(self, kind, name: str, documentation: str, value: float):
        family = kind(f"vllm:{name}", documentation, labels=["model_name"])
        family.add_metric([self.model_name], value)
        return family


class ServerMetrics:
    """The app's registry, and what is recorded per request. `cache_config`: the KV cache's
    settings, shown as the labels of `vllm:cache_config_info` (a gauge set to 1)."""

    def __init__(self, stats: EngineStats, model_name: str, max_model_len: int = 4096,
                 cache_config: dict[str, str] | None = None):
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self.registry.register(EngineStatsCollector(stats, model_name))
        tokens = buckets_1_2_5(max_model_len)
        self.prompt_tokens = self._histogram("request_prompt_tokens",
                                             "Prompt tokens per request.", tokens)
        self.generation_tokens = self._histogram(
            "request_generation_tokens", "Tokens generated per request (all its samples).",
            tokens)
        self.queue_time = self._histogram("request_queue_time_seconds",
                                          "Time waiting before the first step.", E2E_BUCKETS)
        self.prefill_time = self._histogram("request_prefill_time_seconds",
                                            "First step to first token.", E2E_BUCKETS)
        self.decode_time = self._histogram("request_decode_time_seconds",
                                           "First token to last token.", E2E_BUCKETS)
        self.inference_time = self._histogram("request_inference_time_seconds",
                                              "First step to last token.", E2E_BUCKETS)
        self.tpot = self._histogram("time_per_output_token_seconds",
                                    "Time per output token (between two tokens of a request).",
                                    ITL_BUCKETS)
        self.params_n = self._histogram("request_params_n", "The n request parameter.",
                                        N_BUCKETS)
        self.params_max_tokens = self._histogram(
            "request_params_max_tokens", "The max_tokens request parameter.", tokens)
        if cache_config:
            Gauge("vllm:cache_config_info", "The KV cache's configuration.", list(cache_config),
                  registry=self.registry).labels(**cache_config).set(1)
        self.ttft = self._histogram("time_to_first_token_seconds",
                                    "Time to first token.", TTFT_BUCKETS)
        self.itl = self._histogram("inter_token_latency_seconds",
                                   "Time between two tokens of one request.", ITL_BUCKETS)
        self.e2e = self._histogram("e2e_request_latency_seconds",
                                   "Time from arrival to the last token.", E2E_BUCKETS)
        self.success = Counter("vllm:request_success", "Requests ended, by finish reason.",
                               ["model_name", "finished_reason"], registry=self.registry)

    def _histogram(self, name: str, documentation: str, buckets: list[float]):
        return Histogram(f"vllm:{name}", documentation, ["model_name"], buckets=buckets,
                         registry=self.registry).labels(self.model_name)

    def record_params(self, params: SamplingParams) -> None:
        """A request was added with these settings."""
        self.params_n.observe(params.n)
        self.params_max_tokens.observe(params.max_tokens)

    def record_finished(self, output: RequestOutput) -> None:
        m = output.metrics
        if m.first_token_time is not None:
            self.ttft.observe(m.time_to_first_token)
        for latency in m.inter_token_latencies:
            self.itl.observe(latency)
            self.tpot.observe(latency)
        if m.finished_time is not None:
            self.e2e.observe(m.finished_time - m.arrival_time)
        if None not in (m.first_scheduled_time, m.first_token_time, m.last_token_time):
            self.queue_time.observe(m.first_scheduled_time - m.arrival_time)
            self.prefill_time.observe(m.first_token_time - m.first_scheduled_time)
            self.decode_time.observe(m.last_token_time - m.first_token_time)
            self.inference_time.observe(m.last_token_time - m.first_scheduled_time)
        self.prompt_tokens.observe(len(output.prompt_token_ids))
        self.generation_tokens.observe(sum(len(c.token_ids) for c in output.outputs))
        self.success.labels(self.model_name, output.outputs[0].finish_reason).inc()

    def record_aborted(self) -> None:
        self.success.labels(self.model_name, "abort").inc()


def cache_config_info(engine) -> dict[str, str]:
    """An `LLMEngine`'s KV-cache settings under vLLM's `CacheConfig` names."""
    config = engine.config
    return {"block_size": str(config.block_size), "cache_dtype": config.dtype,
            "enable_prefix_caching": str(config.enable_prefix_caching),
            "gpu_memory_utilization": str(config.gpu_memory_utilization),
            "num_gpu_blocks": str(engine.stats.num_blocks),
            "swap_space": str(config.swap_space)}
