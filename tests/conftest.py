import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from checkpoints import CONFIGS, make_checkpoint  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "kernels: Triton kernels under TRITON_INTERPRET=1")
    config.addinivalue_line("markers", "compile: Triton kernels compiled for real GPUs")
    config.addinivalue_line("markers", "browser: the built docs site in headless Chromium")
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU (tools/gpu_acceptance.sh)")
    config.addinivalue_line("markers", "soak: thousands of requests against the server (make "
                                       "test-soak; not in make test)")
    config.addinivalue_line("markers", "clients: real clients with heavy installs (lm-eval, "
                                       "guidellm): make test-clients")


@pytest.fixture(scope="session", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory) -> Path:
    """Each architecture/config as a random-weight HF checkpoint folder (built once per run)."""
    return make_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="session")
def llama_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama"), "llama-gqa-llama3")


@pytest.fixture(scope="module", params=["llama-gqa-llama3", "qwen3-gqa-headdim"])
def gqa_model_path(request, tmp_path_factory) -> str:
    """GQA 2 with head dim 16, and GQA 4 with head dim 32 (one KV head): the attention backends'
    end-to-end tests run on both."""
    return str(make_checkpoint(tmp_path_factory.mktemp(request.param), request.param))
