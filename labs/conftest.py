"""Grading machinery shared by every lab.

Each lab's test module names the learner's starter file and the reference module in minillm:

    STARTER = "kv_cache.py"               # beside the test file
    REFERENCE = "minillm.memory.sizing"   # the engine's own implementation

and its tests take the `impl` fixture: the learner's module by default, minillm's with
`--reference` (what CI runs to prove the tests are right), or any file with `--impl PATH` (how
`tools/check_labs_fail.py` grades its wrong solutions). Tests carry one marker per task, e.g.
`@pytest.mark.task1_2`, so `pytest labs/lab01_kv_cache -m task1_2` grades task 1.2 alone.

So that a solution cannot be fitted to the tests, many tests draw fresh inputs each run from the
`rng` fixture (the header prints the seed, `--lab-seed N` repeats a run) and some are hypothesis
property tests. Tests marked `integration` plug the learner's whole lab into the real engine code
and require the reference's figures or tokens; they run with `--integration` (`make grade
LAB=lab03 INTEGRATION=1`). The hooks they use: `replay(..., allocator_cls=)` (chapters 3-4's
trace replay: labs 2, 3), `LLM(block_manager_cls=, scheduler_cls=)` (the engine: labs 3, 4),
and for a function the engine calls (lab 5's kernel parts, lab 6's `sample`) pytest's
`monkeypatch` on the module that calls it. Each test has a time limit (pytest-timeout), so an
endless loop fails instead of hanging.
"""
from __future__ import annotations

import importlib
import importlib.util
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

LABS_DIR = Path(__file__).parent
MAX_LABS, MAX_TASKS = 12, 12
TIME_LIMIT_S = 30  # per test; the reference needs well under a second for any of them

# Property tests: no example database written into the learner's folder, no flaky deadlines.
# tools/check_labs_fail.py grades with `--hypothesis-profile labs-check`: it only needs to know
# that a test fails, not the smallest input that makes it fail.
settings.register_profile("labs", database=None, deadline=None, max_examples=150,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("labs-check", settings.get_profile("labs"), max_examples=100,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile("labs")


def pytest_addoption(parser):
    group = parser.getgroup("labs")
    group.addoption("--reference", action="store_true", default=False,
                    help="grade minillm's reference implementation instead of your lab files")
    group.addoption("--impl", default=None, metavar="PATH",
                    help="grade this file instead of the lab's starter file (one lab at a time)")
    group.addoption("--integration", action="store_true", default=False,
                    help="also run the integration tests (your code inside the real replay)")
    group.addoption("--lab-seed", type=int, default=None,
                    help="seed of the random inputs (default: a fresh one each run)")


def pytest_configure(config):
    for lab in range(0, MAX_LABS + 1):
        for task in range(1, MAX_TASKS + 1):
            config.addinivalue_line("markers", f"task{lab}_{task}: lab {lab}, task {lab}.{task}")
    config.addinivalue_line("markers", "integration: the whole lab plugged into minillm's code")
    if config.getoption("--lab-seed") is None:
        config.option.lab_seed = random.SystemRandom().randrange(10 ** 6)


def load_starter(path: Path):
    """Import a learner's file by path (fresh each session, under a name no one else uses)."""
    name = f"_lab_{path.parent.name}_{path.stem}"
    if name in sys.modules and sys.modules[name].__file__ == str(path):
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
    other = request.config.getoption("--impl")
    if other:
        return load_starter(Path(other).resolve())
    return load_starter(Path(test_module.__file__).parent / test_module.STARTER)


@pytest.fixture
def rng(request) -> random.Random:
    """Random inputs the learner never saw: a fresh seed each run, one stream per test."""
    return random.Random(f"{request.config.getoption('--lab-seed')}:{request.node.nodeid}")


def pytest_report_header(config):
    which = ("minillm's reference" if config.getoption("--reference")
             else config.getoption("--impl") or "your lab files")
    return (f"labs: grading {which}; random inputs from seed {config.getoption('--lab-seed')} "
            f"(repeat with --lab-seed {config.getoption('--lab-seed')})")


# -- a per-task summary at the end of the run ---------------------------------------------------
_TASK_OF: dict[str, list[str]] = {}
_RESULTS: dict[str, dict[str, int]] = {}


def pytest_collection_modifyitems(config, items):
    run_integration = config.getoption("--integration")
    kept, dropped = [], []
    for item in items:
        if item.get_closest_marker("integration") and not run_integration:
            dropped.append(item)
            continue
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIME_LIMIT_S))
        kept.append(item)
        _TASK_OF[item.nodeid] = [m.name for m in item.iter_markers()
                                 if m.name.startswith("task") or m.name == "integration"]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        for task in _TASK_OF.get(report.nodeid, []):
            counts = _RESULTS.setdefault(task, {"passed": 0, "failed": 0, "skipped": 0})
            counts[report.outcome] += 1


def _order(task: str) -> list:
    return [int(x) for x in task[4:].split("_")] if task.startswith("task") else [10 ** 6]


def pytest_terminal_summary(terminalreporter, config):
    if not _RESULTS:
        return
    terminalreporter.section("tasks")
    for task in sorted(_RESULTS, key=_order):
        counts = _RESULTS[task]
        total = sum(counts.values())
        done = counts["passed"] == total
        name = task[4:].replace("_", ".") if task.startswith("task") else task
        terminalreporter.write_line(
            f"task {name:>11}: {counts['passed']}/{total} tests pass"
            f"{'  -- done' if done else ''}")
    if any(c["failed"] for c in _RESULTS.values()):
        seed = config.getoption("--lab-seed")
        terminalreporter.write_line(f"random inputs came from --lab-seed {seed}: add it to "
                                    "repeat this run exactly")
