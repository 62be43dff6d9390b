"""Strip what must not be committed from executed notebooks: widget state and run metadata.

`jupyter nbconvert --execute` saves the widgets' state in `metadata.widgets` (turning that off,
`--ExecutePreprocessor.store_widget_state=False`, crashes nbclient on `interact` outputs), so
`make notebooks` runs this afterwards: `python tools/clean_notebooks.py chapters/*.ipynb`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def clean(path: Path) -> bool:
    """Clean one notebook in place; True if it changed."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    nb["metadata"].pop("widgets", None)
    nb["metadata"].pop("jupytext", None)
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("execution", None)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        path.write_text(new, encoding="utf-8")
        return True
    return False


def main(paths: list[str]) -> int:
    errors = 0
    for name in paths:
        path = Path(name)
        changed = clean(path)
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    errors += 1
                    print(f"{path}: a cell raised {out['ename']}: {out['evalue']}")
        print(f"{path}: {'cleaned' if changed else 'clean'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
