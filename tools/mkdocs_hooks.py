"""mkdocs hooks: put the chapters and the labs on the site straight from where they live.

The site's docs_dir is `docs/`, but the chapters are `chapters/*.ipynb` and the labs'
instructions are `labs/*/README.md`. Instead of copies or symlinks (which break on some clones),
this hook adds those files to the build as `chapters/<name>.ipynb` and `labs/<lab>.md`, and fills
the "Chapters" and "Labs" sections of the nav from them, so a new chapter or lab appears on the
site without touching mkdocs.yml. It also:

- leaves out of the nav the pages other engineers have not written yet (`PENDING`), with a note,
  instead of failing `mkdocs build --strict`;
- removes the MathJax `<script>` that nbconvert's template loads from a CDN: the site must work
  offline, and the notebooks write their formulas as code;
- replaces the text repr of a widget (saved without state, as the course's conventions want)
  with a note saying to open the chapter in JupyterLab.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.minillm")
ROOT = Path(__file__).resolve().parent.parent
PENDING = {"model.md", "kernels.md", "serving.md", "deployment.md"}  # written by other tasks; in the nav once they exist


def chapter_files() -> list[Path]:
    return sorted((ROOT / "chapters").glob("[0-9]*.ipynb"))


def lab_readmes() -> list[Path]:
    return sorted((ROOT / "labs").glob("lab*/README.md"))


def _title(stem: str) -> str:
    number, _, words = stem.partition("_")
    return f"{number} · {words.replace('_', ' ').capitalize()}" if words else stem


def _lab_title(readme: Path) -> str:
    first = readme.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
    return first or readme.parent.name


def on_config(config):
    docs_dir = Path(config["docs_dir"])
    nav = []
    for item in config["nav"] or []:
        if isinstance(item, dict) and len(item) == 1:
            (name, value), = item.items()
            if name == "Chapters" and not value:
                value = [{_title(p.stem): f"chapters/{p.name}"} for p in chapter_files()]
            elif name == "Labs" and not value:
                value = [{_lab_title(p): f"labs/{p.parent.name}.md"} for p in lab_readmes()]
            elif isinstance(value, str) and value in PENDING and not (docs_dir / value).exists():
                log.info("nav: docs/%s is not written yet; left out of the nav", value)
                continue
            item = {name: value}
        nav.append(item)
    config["nav"] = nav
    return config


@event_priority(100)  # before mkdocs-jupyter wraps the notebooks
def on_files(files, config):
    # A notebook is a real file whose path is ROOT / "chapters/NN_name.ipynb": mkdocs-jupyter
    # needs `src_dir` set (it cannot wrap `File.generated` files).
    for path in chapter_files():
        files.append(File(f"chapters/{path.name}", src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    for readme in lab_readmes():
        files.append(File.generated(config, f"labs/{readme.parent.name}.md",
                                    content=readme.read_text(encoding="utf-8")))
    return files


_CDN_SCRIPT = re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*">'
                         r'\s*</script>')


# A widget saved without its state shows as its text repr, e.g. "interactive(children=(...".
_WIDGET_REPR = re.compile(r"<pre>(?:interactive|[A-Z]\w*(?:Box|Slider|Dropdown|Button|Output))\("
                          r".*?</pre>", re.S)
_WIDGET_NOTE = ('<div class="admonition note"><p class="admonition-title">Interactive widget</p>'
                "<p>Its controls need a running kernel: open this chapter in JupyterLab "
                "(<code>make lab</code>) to play with it. The figure or table beside it shows the "
                "same function's results.</p></div>")


def on_page_content(html, page, config, files):
    html = _CDN_SCRIPT.sub("", html)
    return _WIDGET_REPR.sub(_WIDGET_NOTE, html)
