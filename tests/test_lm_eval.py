"""lm-eval, unmodified, against `minillm serve`: its `local-completions` model scores a tiny
multiple-choice task (tests/lm_eval_tasks, no download) through `/v1/completions` with `echo` and
`logprobs`; its own `hf` backend scores the same task on the same checkpoint folder with
transformers. Same accuracy, and every choice's loglikelihood within 1e-4 (float32). A
`generate_until` task runs through the server too, and gives transformers' greedy text.

Both backends prepend the BOS token (`add_bos_token=True`): lm-eval's `hf` backend does by
default with this tokenizer, `local-completions` only when told.

lm-eval is heavy (pandas, pyarrow, scipy, scikit-learn: about 600 MB), so it is the `clients`
extra and this module runs under `make test-clients`.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the tasks read local JSONL files only
os.environ.setdefault("HF_HUB_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the `clients` extra")

import torch  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from minillm.assets import DEFAULT_MODEL  # noqa: E402
from server_process import ServerProcess  # noqa: E402

pytestmark = pytest.mark.clients

TASKS = Path(__file__).parent / "lm_eval_tasks"
MC, GEN = "minillm_austen_mc", "minillm_austen_gen"
NAME = "minillm-tiny"


@pytest.fixture(scope="module")
def server():
    process = ServerProcess(DEFAULT_MODEL, "--dtype", "float32", "--served-model-name", NAME)
    yield process
    process.stop()


def evaluate(model: str, model_args: dict, tasks: list[str]) -> dict:
    # the tasks' data_files are relative to their folder
    cwd = os.getcwd()
    os.chdir(TASKS)
    try:
        return lm_eval.simple_evaluate(
            model=model, model_args=model_args, tasks=tasks, log_samples=True,
            task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
            batch_size=4)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def through_server(server) -> dict:
    return evaluate("local-completions", dict(
        model=NAME, base_url=f"{server.url}/v1/completions", tokenizer_backend="huggingface",
        tokenizer=str(DEFAULT_MODEL), tokenized_requests=True, max_length=1024,
        add_bos_token=True), [MC, GEN])


@pytest.fixture(scope="module")
def through_hf() -> dict:
    return evaluate("hf", dict(pretrained=str(DEFAULT_MODEL), dtype="float32", device="cpu",
                               add_bos_token=True), [MC])


def choice_loglikelihoods(results: dict) -> dict[tuple[int, int], float]:
    """(document, choice) -> the choice's loglikelihood given the question."""
    return {(s["doc_id"], c): resp[0] for s in results["samples"][MC]
            for c, resp in enumerate(s["filtered_resps"])}


def test_multiple_choice_same_as_transformers(through_server, through_hf):
    served, reference = choice_loglikelihoods(through_server), choice_loglikelihoods(through_hf)
    assert len(reference) == 20 * 4 and served.keys() == reference.keys()
    for key, value in reference.items():
        assert abs(served[key] - value) < 1e-4, (key, served[key], value)
    acc = through_server["results"][MC]["acc,none"]
    assert acc == through_hf["results"][MC]["acc,none"]
    assert 0 < acc <= 1  # the model knows Austen a little: some answers right


@torch.inference_mode()
def greedy_text(model, tokenizer, context: str, max_tokens: int, until: list[str]) -> str:
    """transformers' greedy continuation, cut at the first stop string (as lm-eval cuts it)."""
    ids = torch.tensor([tokenizer.encode(context)])  # with BOS, as add_bos_token=True sends it
    out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)[0, ids.shape[1]:]
    text = tokenizer.decode(out, skip_special_tokens=True)
    for stop in until:
        text = text.split(stop)[0]
    return text


def test_generate_until_same_as_transformers(through_server):
    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    samples = through_server["samples"][GEN]
    assert len(samples) == 5
    for s in samples:
        expected = greedy_text(model, tokenizer, s["doc"]["context"], 8, ["\n", "."])
        assert s["filtered_resps"][0] == expected, (s["doc"], expected)
