"""`GET /metrics`: the engine's state and the requests' latencies, under vLLM's metric names.

Dashboards and autoscalers written for vLLM (Grafana, KEDA, KServe) read these names. Each app
has its own `CollectorRegistry`, so two servers in one process (tests) never share counters.

- Gauges and engine counters are read from `EngineStats` when Prometheus scrapes: the engine
  already counts them, so nothing is done per step here.
- Latency histograms and `request_success` are recorded once per request, when it ends, from
  the `RequestMetrics` the engine filled in.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from minillm.engine.stats import EngineStats
from minillm.outputs import RequestOutput

# vLLM's buckets (seconds), so the histograms line up with vLLM's dashboards.
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0]
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]


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

    def _family(self, kind, name: str, documentation: str, value: float):
        family = kind(f"vllm:{name}", documentation, labels=["model_name"])
        family.add_metric([self.model_name], value)
        return family


class ServerMetrics:
    """The app's registry, and what is recorded per request."""

    def __init__(self, stats: EngineStats, model_name: str):
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self.registry.register(EngineStatsCollector(stats, model_name))
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

    def record_finished(self, output: RequestOutput) -> None:
        m = output.metrics
        if m.first_token_time is not None:
            self.ttft.observe(m.time_to_first_token)
        for latency in m.inter_token_latencies:
            self.itl.observe(latency)
        if m.finished_time is not None:
            self.e2e.observe(m.finished_time - m.arrival_time)
        self.success.labels(self.model_name, output.outputs[0].finish_reason).inc()

    def record_aborted(self) -> None:
        self.success.labels(self.model_name, "abort").inc()
