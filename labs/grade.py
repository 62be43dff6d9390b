"""`make grade LAB=lab03 [TASK=3.2] [INTEGRATION=1]`: grade one lab, or one task of it.

Checks that LAB names exactly one lab folder and TASK one of its tasks, with a message that lists
the choices when not (an unknown name must not silently grade nothing, or everything), then runs
pytest on that lab's tests.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

LABS = Path(__file__).resolve().parent


def lab_folders() -> list[Path]:
    return sorted(p for p in LABS.glob("lab*") if p.is_dir() and any(p.glob("test_*.py")))


def tasks_of(folder: Path) -> list[str]:
    """The task IDs ("3.2") of a lab, from the markers of its tests."""
    found = set()
    for test in folder.glob("test_*.py"):
        found |= set(re.findall(r"pytest\.mark\.task(\d+)_(\d+)", test.read_text()))
    return [f"{lab}.{task}" for lab, task in sorted(found, key=lambda t: (int(t[0]), int(t[1])))]


def choose_lab(name: str) -> Path:
    folders = lab_folders()
    names = ", ".join(p.name for p in folders)
    if not name:
        raise SystemExit(f"make grade: say which lab, e.g. LAB=lab01 (labs: {names})")
    matches = [p for p in folders if p.name == name or p.name.split("_")[0] == name]
    if len(matches) != 1:
        raise SystemExit(f"make grade: LAB={name} is not a lab; choose one of: {names} "
                         "(LAB=lab01 or the full folder name)")
    return matches[0]


def main(argv: list[str]) -> int:
    lab, task, integration = (argv + ["", "", ""])[:3]
    folder = choose_lab(lab)
    args = [str(folder), "-v"]
    if task:
        tasks = tasks_of(folder)
        if task not in tasks:
            raise SystemExit(f"make grade: TASK={task} is not a task of {folder.name}; its tasks "
                             f"are {', '.join(tasks)} (TASK=3.2, as in the lab's README)")
        args += ["-m", "task" + task.replace(".", "_")]
    if integration:
        args.append("--integration")
    return pytest.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
