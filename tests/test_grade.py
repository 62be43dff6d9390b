"""`make grade` refuses a lab or task it does not know, naming the choices, instead of grading
everything (LAB=lab1 once ran all of tests/) or nothing (TASK=3 once selected no test)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("lab,task,expected", [
    ("", "", "say which lab"),
    ("lab1", "", "LAB=lab1 is not a lab; choose one of: lab00_metrics"),
    ("lab99", "", "LAB=lab99 is not a lab"),
    ("lab03", "3", "TASK=3 is not a task of lab03_paged_blocks; its tasks are 3.1, 3.2, 3.3, 3.4"),
    ("lab03", "4.1", "TASK=4.1 is not a task of lab03_paged_blocks"),
])
def test_unknown_lab_or_task_is_refused_with_the_choices(lab, task, expected):
    done = subprocess.run([sys.executable, "labs/grade.py", lab, task, ""], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and expected in done.stderr, \
        f"LAB={lab!r} TASK={task!r}: exit {done.returncode}, stderr {done.stderr[-300:]!r}"
    assert "passed" not in done.stdout, f"LAB={lab!r} TASK={task!r} ran tests: {done.stdout[-300:]}"
