"""Strip what must not be committed from executed notebooks: widget state, run metadata and
the paths of the machine that ran them.

`jupyter nbconvert --execute` saves the widgets' state in `metadata.widgets` (turning that off,
`--ExecutePreprocessor.store_widget_state=False`, crashes nbclient on `interact` outputs), so
`make notebooks` runs this afterwards: `python tools/clean_notebooks.py chapters/*.ipynb`.
Outputs that show a path of this machine (the virtual environment, the checkout, the home
folder) show it relative instead (`.venv/bin/python`, `~/...`): a reader's machine differs.
`--check` changes nothing and fails if a committed output still holds a machine path (CI).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Absolute paths that belong to one machine: home folders, temp and checkout roots, Windows users.
MACHINE_PATH = re.compile(r"(?<![\w.~])(/(home|Users|root|tmp|work|private|mnt|srv|opt)/[^\s'\"),]*"
                          r"|[A-Za-z]:\\\\?Users\\)")


def relative_paths(text: str) -> str:
    """This machine's virtual environment, checkout and home folder, written relative."""
    for path, short in ((Path(sys.prefix), ".venv"), (ROOT, "."), (Path.home(), "~")):
        text = text.replace(f"{path}/", f"{short}/").replace(str(path), short)
    return text


def outputs_text(cell) -> list[str]:
    texts = []
    for out in cell.get("outputs", []):
        texts.append("".join(out.get("text", "")))
        for kind, data in out.get("data", {}).items():
            if kind.startswith("text/"):
                texts.append("".join(data))
    return texts


def machine_paths(nb) -> list[str]:
    """The machine paths found in a notebook's text outputs."""
    return [m.group(0) for cell in nb["cells"] for text in outputs_text(cell)
            for m in MACHINE_PATH.finditer(text)]


def clean(path: Path) -> bool:
    """Clean one notebook in place; True if it changed."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    nb["metadata"].pop("widgets", None)
    nb["metadata"].pop("jupytext", None)
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("execution", None)
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = [relative_paths(line) for line in out["text"]]
            for kind, data in out.get("data", {}).items():
                if kind.startswith("text/"):
                    out["data"][kind] = [relative_paths(line) for line in data] \
                        if isinstance(data, list) else relative_paths(data)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        path.write_text(new, encoding="utf-8")
        return True
    return False


def main(paths: list[str]) -> int:
    check = "--check" in paths
    errors = 0
    for name in (p for p in paths if p != "--check"):
        path = Path(name)
        changed = False if check else clean(path)
        nb = json.loads(path.read_text(encoding="utf-8"))
        for found in machine_paths(nb):
            errors += 1
            print(f"{path}: an output shows a machine path: {found}")
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    errors += 1
                    print(f"{path}: a cell raised {out['ename']}: {out['evalue']}")
        print(f"{path}: {'cleaned' if changed else 'clean'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
