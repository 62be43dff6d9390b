"""guidellm, vLLM's load-testing tool, unmodified against the server: a short concurrent run of
synthetic prompts completes with every request successful and the token counts asked for.
The `clients` extra installs it (`make test-clients`); docs/benchmarks.md has a longer run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from minillm.assets import DEFAULT_MODEL
from server_process import ServerProcess

pytestmark = pytest.mark.clients
NAME, REQUESTS, PROMPT_TOKENS, OUTPUT_TOKENS = "minillm-tiny", 12, 48, 16


def find(report, key: str) -> list:
    """Every value under `key` anywhere in guidellm's JSON report (its layout changes between
    versions; the counts' names have not)."""
    if isinstance(report, dict):
        return [v for k, v in report.items() if k == key] + [
            x for v in report.values() for x in find(v, key)]
    if isinstance(report, list):
        return [x for v in report for x in find(v, key)]
    return []


def test_guidellm_run_completes_with_no_error(tmp_path):
    guidellm = Path(sys.executable).with_name("guidellm")  # the virtualenv's own
    assert guidellm.exists(), "guidellm is not installed: it is the clients extra"
    server = ServerProcess(DEFAULT_MODEL, "--served-model-name", NAME)
    try:
        output = tmp_path / "guidellm.json"
        run = subprocess.run(
            [str(guidellm), "run",
             "--backend", f"kind=openai_http,target={server.url},model={NAME},"
                          "request_format=/v1/completions",
             "--tokenizer", f"kind=huggingface_auto,model={DEFAULT_MODEL}",
             "--data", f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},"
                       f"output_tokens={OUTPUT_TOKENS}",
             "--profile", "kind=concurrent,streams=4",
             "--constraint", f"kind=max_requests,count={REQUESTS}",
             "--output", f"kind=json,path={output}"],
            capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        server.stop()
    report = json.loads(output.read_text())
    print(f"\nguidellm report keys: {sorted(report)[:8]}")
    successful = [r for v in find(report, "successful") if isinstance(v, list) for r in v]
    errored = [r for v in find(report, "errored") if isinstance(v, list) for r in v]
    assert len(successful) == REQUESTS and not errored, (len(successful), len(errored))
    for request in successful:
        assert find(request, "output_tokens")[0] == OUTPUT_TOKENS, request
