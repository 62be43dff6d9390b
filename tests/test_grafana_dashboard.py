"""deploy/grafana/minillm-dashboard.json against a running server: every panel's PromQL parses
(promql-parser, the Rust parser's Python binding), and every series it names is in the server's
/metrics after a few requests. The vLLM request-phase histograms add up as they must (queue +
inference = end to end), and their buckets are vLLM's.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import httpx
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_process import ServerProcess

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "minillm-dashboard.json"
NAME = "tiny"
# Grafana's variables, replaced by values PromQL accepts
VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$model_name": NAME}


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, query) for every panel target and every query variable."""
    found = [(f"panel {p['title']!r}", t["expr"]) for p in dashboard["panels"]
             for t in p["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(series, label): Grafana's, not PromQL
            series = re.fullmatch(r"label_values\((.+), *\w+\)", variable["definition"])[1]
            found.append((f"variable {variable['name']!r}", series))
    return found


def series_names(expr) -> set[str]:
    """The metric names of every vector selector in a parsed PromQL expression."""
    if isinstance(expr, promql_parser.VectorSelector):
        return {expr.name}
    children = {"MatrixSelector": ["vector_selector"], "Call": ["args"],
                "AggregateExpr": ["expr", "param"], "BinaryExpr": ["lhs", "rhs"],
                "ParenExpr": ["expr"], "UnaryExpr": ["expr"], "SubqueryExpr": ["expr"]}
    names = set()
    for attribute in children.get(type(expr).__name__, []):
        value = getattr(expr, attribute)
        for child in value if isinstance(value, list) else [value]:
            if child is not None:
                names |= series_names(child)
    return names


def parse(query: str):
    for variable, value in VARIABLES.items():
        query = query.replace(variable, value)
    return promql_parser.parse(query)


def missing_series(dashboard: dict, exported: set[str]) -> list[str]:
    errors = []
    for where, query in queries(dashboard):
        names = series_names(parse(query))
        if not names:
            errors.append(f"{where}: names no series: {query}")
        errors += [f"{where}: {name} is not in /metrics" for name in sorted(names - exported)]
    return errors


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def server(llama_checkpoint):
    process = ServerProcess(llama_checkpoint, "--served-model-name", NAME, "--max-model-len",
                            "256")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def metrics_text(server) -> str:
    """/metrics after a few requests: n=2, a stream, a chat, a prompt sent twice."""
    url = f"{server.url}/v1"
    bodies = [("completions", {"prompt": "Once upon a time", "max_tokens": 5, "n": 2}),
              ("completions", {"prompt": "Once upon a time", "max_tokens": 7}),
              ("completions", {"prompt": "The end", "max_tokens": 3, "stream": True}),
              ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                    "max_tokens": 4})]
    for endpoint, body in bodies:
        response = httpx.post(f"{url}/{endpoint}", json={**body, "ignore_eos": True}, timeout=60)
        assert response.status_code == 200, response.text
    server.wait_idle()
    return httpx.get(f"{server.url}/metrics", timeout=5).text


@pytest.fixture(scope="module")
def samples(metrics_text) -> dict[str, list]:
    """Sample name -> its samples (with labels)."""
    result: dict[str, list] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            result.setdefault(s.name, []).append(s)
    return result


def test_every_panel_has_a_query(dashboard):
    assert len(dashboard["panels"]) >= 15
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel


def test_every_series_the_dashboard_names_is_exported(dashboard, samples):
    errors = missing_series(dashboard, set(samples))
    assert not errors, "\n".join(errors)


def test_a_made_up_series_is_caught(dashboard, samples):
    broken = copy.deepcopy(dashboard)
    broken["panels"][0]["targets"][0]["expr"] = (
        'sum(rate(vllm:made_up_latency_seconds_count{model_name="$model_name"}[5m]))')
    assert missing_series(broken, set(samples)) == [
        f"panel {broken['panels'][0]['title']!r}: vllm:made_up_latency_seconds_count is not in "
        f"/metrics"]


def test_vllm_series_the_issue_lists_are_exported(samples):
    for name in ["request_prompt_tokens", "request_generation_tokens",
                 "request_queue_time_seconds", "request_prefill_time_seconds",
                 "request_decode_time_seconds", "request_inference_time_seconds",
                 "time_per_output_token_seconds", "iteration_tokens_total", "request_params_n",
                 "request_params_max_tokens"]:
        assert samples[f"vllm:{name}_count"][0].value > 0, name
    info = samples["vllm:cache_config_info"][0]
    assert info.value == 1 and info.labels["block_size"] == "16", info.labels


def value(samples, name: str) -> float:
    (sample,) = samples[name]
    return sample.value


def test_request_histograms_add_up(samples):
    requests = 4  # n=2 is one request
    for name in ["request_queue_time_seconds", "request_inference_time_seconds",
                 "e2e_request_latency_seconds", "request_prompt_tokens", "request_params_n"]:
        assert value(samples, f"vllm:{name}_count") == requests, name
    # arrival -> first step -> last token: the phases add up to the end-to-end latency
    queue, inference, e2e = (value(samples, f"vllm:{name}_seconds_sum") for name in (
        "request_queue_time", "request_inference_time", "e2e_request_latency"))
    assert queue + inference == pytest.approx(e2e, abs=1e-6)
    prefill, decode = (value(samples, f"vllm:request_{p}_time_seconds_sum")
                       for p in ("prefill", "decode"))
    assert prefill + decode == pytest.approx(inference, abs=1e-6)
    assert prefill > 0  # the first step runs the model before its token exists
    assert value(samples, "vllm:request_generation_tokens_sum") == 2 * 5 + 7 + 3 + 4
    assert value(samples, "vllm:request_params_n_sum") == 2 + 1 + 1 + 1
    assert value(samples, "vllm:request_params_max_tokens_sum") == 5 + 7 + 3 + 4
    assert value(samples, "vllm:request_prompt_tokens_sum") == value(
        samples, "vllm:prompt_tokens_total") + value(samples, "vllm:prefix_cache_hits_total")
    steps = value(samples, "vllm:iteration_tokens_total_count")
    assert 4 <= steps <= value(samples, "vllm:generation_tokens_total")


def buckets(samples, name: str) -> list[str]:
    return [s.labels["le"] for s in samples[f"vllm:{name}_bucket"]]


def test_buckets_are_vllms(samples):
    assert buckets(samples, "request_params_n") == ["1.0", "2.0", "5.0", "10.0", "20.0", "+Inf"]
    # 1-2-5 up to max_model_len (256)
    assert buckets(samples, "request_prompt_tokens") == [
        "1.0", "2.0", "5.0", "10.0", "20.0", "50.0", "100.0", "200.0", "+Inf"]
    assert buckets(samples, "iteration_tokens_total")[:3] == ["1.0", "8.0", "16.0"]
    assert buckets(samples, "iteration_tokens_total")[-2:] == ["16384.0", "+Inf"]
    assert buckets(samples, "request_queue_time_seconds")[:3] == ["0.3", "0.5", "0.8"]
