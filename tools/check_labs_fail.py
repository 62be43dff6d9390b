"""Prove the labs have teeth: every task's tests must fail against the untouched starter files.

`make test-labs` first runs `pytest labs --reference` (the tests pass on minillm's reference),
then this script, which

1. checks that each stub in a starter file keeps the exact signature of the reference it stands
   for (a learner's finished file must drop into the engine's place), and
2. runs every lab's tests against the starter files (in one pytest session) and checks that each
   task marker has tests and that none of them passes.

Exit status 0 when both hold, 1 otherwise, with a table of tasks.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LABS = ROOT / "labs"


def lab_modules() -> list[tuple[Path, str, str]]:
    """(test file, STARTER file name, REFERENCE module) for every lab test module."""
    found = []
    for test in sorted(LABS.glob("lab*/test_*.py")):
        names = {}
        for node in ast.parse(test.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name) \
                    and node.targets[0].id in ("STARTER", "REFERENCE"):
                names[node.targets[0].id] = ast.literal_eval(node.value)
        if {"STARTER", "REFERENCE"} <= names.keys():
            found.append((test, names["STARTER"], names["REFERENCE"]))
    return found


def is_stub(fn) -> bool:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return "raise NotImplementedError" in source


def signature_problems(starter_path: Path, reference: str) -> list[str]:
    sys.path.insert(0, str(LABS))
    from conftest import load_starter  # labs/conftest.py

    starter, ref = load_starter(starter_path), importlib.import_module(reference)
    problems = []
    for name, obj in vars(starter).items():
        if inspect.isfunction(obj) and obj.__module__ == starter.__name__ and is_stub(obj):
            pairs = [(name, obj, getattr(ref, name, None))]
        elif inspect.isclass(obj) and obj.__module__ == starter.__name__:
            ref_cls = getattr(ref, name, None)
            pairs = [(f"{name}.{m}", f, getattr(ref_cls, m, None))
                     for m, f in vars(obj).items() if inspect.isfunction(f) and is_stub(f)]
        else:
            continue
        for qualname, fn, ref_fn in pairs:
            if ref_fn is None:
                problems.append(f"{starter_path.relative_to(ROOT)}: {qualname} is not in "
                                f"{reference}")
            elif inspect.signature(fn) != inspect.signature(ref_fn):
                problems.append(f"{starter_path.relative_to(ROOT)}: {qualname}"
                                f"{inspect.signature(fn)} != reference "
                                f"{inspect.signature(ref_fn)}")
    return problems


class TaskOutcomes:
    """A pytest plugin that records, per task marker, how each test ended."""

    def __init__(self):
        self.task_of: dict[str, list[str]] = {}
        self.outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def pytest_collection_modifyitems(self, items):
        for item in items:
            self.task_of[item.nodeid] = [m.name for m in item.iter_markers()
                                         if m.name.startswith("task")]

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            for task in self.task_of.get(report.nodeid, ["(no task marker)"]) or \
                    ["(no task marker)"]:
                self.outcomes[task][report.outcome] += 1


def main() -> int:
    labs = lab_modules()
    if not labs:
        print("no lab tests found under labs/")
        return 1
    problems = []
    for test, starter, reference in labs:
        problems += signature_problems(test.parent / starter, reference)

    plugin = TaskOutcomes()
    pytest.main([str(LABS), "-p", "no:terminal", "-p", "no:cacheprovider", "-o",
                 "addopts="], plugins=[plugin])
    if not plugin.outcomes:
        problems.append("no lab test ran against the starter files")
    print(f"\n{'task':10} {'failed':>7} {'passed':>7}  against the starter files")
    for task in sorted(plugin.outcomes, key=lambda t: [int(x) if x.isdigit() else x
                                                       for x in t[4:].split("_")]):
        counts = plugin.outcomes[task]
        failed = counts["failed"]
        passed = counts["passed"] + counts["skipped"]
        print(f"{task:10} {failed:7d} {passed:7d}")
        if task == "(no task marker)":
            problems.append(f"{failed + passed} lab tests carry no task marker")
        elif passed or not failed:
            problems.append(f"{task}: {passed} test(s) pass (or skip) on the untouched starter")
    if problems:
        print("\nthe labs lack teeth:\n  " + "\n  ".join(problems))
        return 1
    print(f"\nall {len(plugin.outcomes)} tasks fail on the starter files, as they must")
    return 0


if __name__ == "__main__":
    sys.exit(main())
