"""The server's OpenAPI contract, fuzzed by schemathesis: every operation of /openapi.json gets
bodies that fit its schema and bodies that do not, and every answer must be documented — its
status, its content type, its body's schema — and none may be a 5xx.

Bounded so it runs in `make test`: EXAMPLES examples per operation and mode (derandomized, so
each run sends the same requests), a per-request timeout, a 64-token context, and the
generation sizes (`max_tokens`, `n`) made small where the schema allows. The counts it prints
are recorded in docs/serving.md.
"""
from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from server_process import API_KEY, ServerProcess

EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def server(llama_checkpoint):
    process = ServerProcess(llama_checkpoint, "--served-model-name", "tiny", "--api-key",
                            API_KEY, "--max-model-len", "64", "--max-request-body-bytes",
                            str(2**20))
    yield process
    process.stop()


def made_small(body):
    """Fewer tokens to generate, within the schema: `max_tokens` and `n` only ever go down
    (never below 1), and half the bodies name the served model so they reach the engine."""
    if isinstance(body, dict):
        for field, most in (("max_tokens", 8), ("max_completion_tokens", 8), ("n", 3)):
            if type(body.get(field)) is int and body[field] > most:
                body[field] = most
        if isinstance(body.get("model"), str) and len(body["model"]) % 2:
            body["model"] = "tiny"
    return body


def test_openapi_contract(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    statuses, failures = Counter(), []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        # Without a body only the X-Request-Id header varies: a string, never invalid to OpenAPI.
        modes = [GenerationMode.POSITIVE] + [GenerationMode.NEGATIVE] * bool(operation.body)
        for mode in modes:
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                if mode is GenerationMode.POSITIVE:
                    case.body = made_small(case.body)
                try:
                    response = case.call_and_validate(headers={"Authorization":
                                                               f"Bearer {API_KEY}"},
                                                      checks=CHECKS, timeout=30)
                    statuses[response.status_code] += 1
                except (Exception, BaseExceptionGroup) as e:  # a failed check: collect all
                    statuses["failed"] += 1
                    failures.append(f"{operation.label} ({mode.value}) {case.body!r:.300}: "
                                    f"{e!r:.600}")

            run()
    total = sum(statuses.values())
    print(f"\nschemathesis: {len(operations)} operations, {total} requests, statuses "
          f"{dict(sorted(statuses.items(), key=str))}")
    assert not failures, "\n".join(failures[:20])
    assert not any(isinstance(s, int) and s >= 500 for s in statuses)
    assert total >= len(operations) * EXAMPLES  # it really ran
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    assert server.wait_idle()["vllm:kv_cache_usage_perc"] == 0
