"""Grading machinery shared by every lab.

Each lab's test module names the learner's starter file and the reference module in minillm:

    STARTER = "kv_cache.py"               # beside the test file
    REFERENCE = "minillm.memory.sizing"   # the engine's own implementation

and its tests take the `impl` fixture: the learner's module by default, minillm's with
`--reference` (what CI runs to prove the tests are right). Tests carry one marker per task, e.g.
`@pytest.mark.task1_2`, so `pytest labs/lab01_kv_cache -m task1_2` grades task 1.2 alone.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

LABS_DIR = Path(__file__).parent
MAX_LABS, MAX_TASKS = 12, 12


def pytest_addoption(parser):
    parser.addoption("--reference", action="store_true", default=False,
                     help="grade minillm's reference implementation instead of your lab files")


def pytest_configure(config):
    for lab in range(1, MAX_LABS + 1):
        for task in range(1, MAX_TASKS + 1):
            config.addinivalue_line("markers", f"task{lab}_{task}: lab {lab}, task {lab}.{task}")


def load_starter(path: Path):
    """Import a learner's file by path (fresh each session, under a name no one else uses)."""
    name = f"_lab_{path.parent.name}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def impl(request):
    """The implementation under test: the learner's starter file, or minillm's reference."""
    test_module = request.module
    if request.config.getoption("--reference"):
        return importlib.import_module(test_module.REFERENCE)
    return load_starter(Path(test_module.__file__).parent / test_module.STARTER)


def pytest_report_header(config):
    which = "minillm's reference" if config.getoption("--reference") else "your lab files"
    return f"labs: grading {which}"


# -- a per-task summary at the end of the run ---------------------------------------------------
_TASK_OF: dict[str, list[str]] = {}
_RESULTS: dict[str, dict[str, int]] = {}


def pytest_collection_modifyitems(items):
    for item in items:
        _TASK_OF[item.nodeid] = [m.name for m in item.iter_markers() if m.name.startswith("task")]


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        for task in _TASK_OF.get(report.nodeid, []):
            counts = _RESULTS.setdefault(task, {"passed": 0, "failed": 0, "skipped": 0})
            counts[report.outcome] += 1


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    terminalreporter.section("tasks")
    for task in sorted(_RESULTS, key=lambda t: [int(x) for x in t[4:].split("_")]):
        counts = _RESULTS[task]
        total = sum(counts.values())
        done = counts["passed"] == total
        terminalreporter.write_line(
            f"task {task[4:].replace('_', '.'):>5}: {counts['passed']}/{total} tests pass"
            f"{'  -- done' if done else ''}")
