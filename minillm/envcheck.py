"""What works on this machine: the checks behind chapter 0 (`python -m minillm.envcheck`).

Each check returns a `Check(name, ok, detail, needed_for)`. Nothing here raises: a missing
piece is reported, with what it costs the learner, so the course can say "this works, that
doesn't, and here is why".
"""
from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from dataclasses import dataclass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    needed_for: str

    def line(self) -> str:
        mark = "ok " if self.ok else "-- "
        return f"{mark} {self.name:<13} {self.detail}  ({self.needed_for})"


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return None


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", ok, f"{platform.python_version()} ({sys.executable})",
                 "everything; 3.10 or newer")


def check_torch() -> Check:
    version = _version("torch")
    if version is None:
        return Check("torch", False, "not installed", "everything: run `make setup`")
    import torch

    return Check("torch", True, f"{version}, {torch.get_num_threads()} CPU threads",
                 "the model and the engine")


def check_device() -> Check:
    try:
        import torch
    except ImportError:
        return Check("device", False, "no torch", "GPU runs")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return Check("device", True, f"cuda: {name}", "GPU runs and real Triton kernels")
    return Check("device", False, "CPU only (no CUDA GPU)",
                 "the course runs on CPU; GPU timings come from documented scripts")


def check_triton() -> Check:
    version = _version("triton")
    if version is None:
        return Check("triton", False, "not installed",
                     "the PagedAttention kernels chapter; `pip install triton`")
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    how = "interpreter on (TRITON_INTERPRET=1)" if interpret else "set TRITON_INTERPRET=1 on CPU"
    return Check("triton", True, f"{version}; {how}", "the PagedAttention kernels chapter")


def check_widgets() -> Check:
    version = _version("ipywidgets")
    return Check("ipywidgets", version is not None, version or "not installed",
                 "the chapters' sliders (each has a static figure too)")


def check_matplotlib() -> Check:
    version = _version("matplotlib")
    return Check("matplotlib", version is not None, version or "not installed",
                 "the chapters' figures")


def check_model() -> Check:
    try:
        from minillm.assets import DEFAULT_MODEL
    except Exception:  # noqa: BLE001
        return Check("model", False, "minillm.assets.DEFAULT_MODEL is missing",
                     "chapters that generate text")
    from pathlib import Path

    path = Path(DEFAULT_MODEL)
    ok = (path / "config.json").exists()
    return Check("model", ok, f"{path.name}" + ("" if ok else " (not found)"),
                 "chapters that generate text")


def check_environment() -> list[Check]:
    """Every check, in the order chapter 0 prints them."""
    return [check_python(), check_torch(), check_device(), check_triton(), check_widgets(),
            check_matplotlib(), check_model()]


def measure_bandwidth(megabytes: int = 256, repeats: int = 3) -> float:
    """This machine's memory bandwidth in GB/s, from timing a large tensor copy (read + write)."""
    import torch

    src = torch.empty(megabytes * 2 ** 20 // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def main() -> None:
    for check in check_environment():
        print(check.line())


if __name__ == "__main__":
    main()
