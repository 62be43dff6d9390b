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
  with a note saying to open the chapter in JupyterLab;
- hides the `# NBVAL_*` markers (for the notebook tests, not for readers) from the code cells,
  and puts a "download this notebook" link on each chapter (mkdocs-jupyter's `include_source`
  copies the notebook beside the page);
- turns the links between chapters and labs, written to work on GitHub and in JupyterLab
  (`../labs/lab03_paged_blocks/README.md`, `../../chapters/04_paging.ipynb`), into site links;
- draws the course roadmap on the home page (`<!-- roadmap -->`) from the chapters and labs that
  exist, so it marks what is written;
- gives a chapter's code and result tables room, so that 100 columns are not cut off.
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


# The outline of COURSEWARE.md: every chapter the course will have, written or not.
ROADMAP = ("Setup", "The production challenge", "The KV cache", "Fragmentation", "Paging",
           "Batching", "PagedAttention, the kernel", "The engine", "Sharing and preemption",
           "Serving over HTTP", "Deploying at scale")
# On a chapter, code of up to 100 columns and the replay tables fit at 1280 pixels: the table of
# contents sidebar gives its room to the notebook (its sections are the chapter's headings), and
# code cells drop their "In [1]:" prompts and take the whole width, in a slightly smaller font.
_NOTEBOOK_STYLE = (
    "<style>.md-sidebar--secondary{display:none!important}"
    ".jupyter-wrapper .jp-InputPrompt,.jupyter-wrapper .jp-OutputPrompt{display:none!important}"
    ".jupyter-wrapper .jp-InputArea-editor,.jupyter-wrapper .jp-OutputArea-output"
    "{width:100%!important;max-width:100%!important;flex:1 1 auto!important}"
    ".jupyter-wrapper .highlight-ipynb pre,.jupyter-wrapper .jp-OutputArea-output pre"
    "{font-size:.62rem!important}</style>")
_NBVAL_MARKER = re.compile(r'<span class="c1">#\s*NBVAL_[A-Z_]+</span>\n|'
                           r'(?<=id="cell-\d">)#\s*NBVAL_[A-Z_]+\n|'
                           r'(?<=id="cell-\d\d">)#\s*NBVAL_[A-Z_]+\n')
_LAB_README_LINK = re.compile(r'href="\.\./labs/(lab[\w-]+)/README\.md"')
_CHAPTER_LINK = re.compile(r"\]\(\.\./\.\./chapters/(\d\d_\w+\.ipynb)\)")


def lab_of_chapter() -> dict[str, str]:
    """Chapter notebook name -> the lab whose README links to it first (its own chapter)."""
    labs = {}
    for readme in lab_readmes():
        found = _CHAPTER_LINK.search(readme.read_text(encoding="utf-8"))
        if found:
            labs.setdefault(found.group(1), readme.parent.name)
    return labs


def roadmap_svg() -> str:
    """The course as a row of boxes, one per chapter: written ones solid and linked, with their
    lab; the rest dashed, "to come"."""
    written = {int(p.stem[:2]): p for p in chapter_files()}
    labs = lab_of_chapter()
    boxes, width, gap = [], 122, 8
    for i, title in enumerate(ROADMAP):
        x, y = (i % 6) * (width + gap), (i // 6) * 92
        path = written.get(i)
        lab = labs.get(path.name) if path else None
        caption = f"lab {int(lab[3:5])}" if lab else "" if path else "to come"
        style = ('fill="#e8eaf6" stroke="#3f51b5"' if path
                 else 'fill="#fafafa" stroke="#9e9e9e" stroke-dasharray="4 3"')
        words = title.split()
        lines = [" ".join(words[:2]), " ".join(words[2:])] if len(title) > 16 else [title]
        text = "".join(f'<tspan x="{x + width / 2}" dy="{15 if j else 0}">{line}</tspan>'
                       for j, line in enumerate(lines))
        box = (f'<rect x="{x}" y="{y}" width="{width}" height="80" rx="8" {style}/>'
               f'<text x="{x + width / 2}" y="{y + 20}" text-anchor="middle" font-weight="bold" '
               f'font-size="13">Chapter {i}</text>'
               f'<text x="{x + width / 2}" y="{y + 40}" text-anchor="middle" font-size="12">'
               f'{text}</text>'
               f'<text x="{x + width / 2}" y="{y + 72}" text-anchor="middle" font-size="11" '
               f'fill="#555">{caption}</text>')
        boxes.append(f'<a href="chapters/{path.stem}/">{box}</a>' if path else box)
    height = 92 * ((len(ROADMAP) + 5) // 6)
    return (f'<figure class="minillm-roadmap"><svg width="100%" viewBox="-2 -2 {6 * (width + gap)} {height}" '
            f'role="img" aria-label="The course roadmap" xmlns="http://www.w3.org/2000/svg" '
            f'font-family="sans-serif">{"".join(boxes)}</svg><figcaption>The course: solid '
            f'chapters are written (click one), dashed ones are to come.</figcaption></figure>')


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri.startswith("labs/"):  # a lab README: its chapter links, site-relative
        markdown = _CHAPTER_LINK.sub(r"](../chapters/\1)", markdown)
    if page.file.src_uri == "index.md":
        markdown = markdown.replace("<!-- roadmap -->", roadmap_svg())
    return markdown


def on_page_content(html, page, config, files):
    html = _CDN_SCRIPT.sub("", html)
    html = _WIDGET_REPR.sub(_WIDGET_NOTE, html)
    if page.file.src_uri.endswith(".ipynb"):
        html = _NBVAL_MARKER.sub("", html)
        html = _LAB_README_LINK.sub(r'href="../../labs/\1/"', html)
        name = Path(page.file.src_uri).name
        link = (f'<p class="minillm-download"><a href="{name}" download>Download this '
                f"notebook</a> to run it yourself (<code>make lab</code> opens it in "
                f"JupyterLab).</p>")
        html = html.replace("</h1>", "</h1>" + link, 1) if "</h1>" in html else link + html
        html = _NOTEBOOK_STYLE + html
    return html
