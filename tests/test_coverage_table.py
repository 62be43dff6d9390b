"""docs/coverage.md: every section of the seed chapter has a chapter, a lab and code, and every
link and path in the table points at something that exists (a renamed chapter or a moved module
fails here, not as a dead link on the site)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "coverage.md"
# The seed chapter's sections, as the issues and the course's conventions name them.
SEED_SECTIONS = ["production challenge", "KV cache", "fragmentation", "PagedAttention: blocks",
                 "PagedAttention: the kernel", "Continuous batching", "Sharing", "Preemption",
                 "Serving systems", "KServe", "HPA", "llm-d", "GitOps"]


def rows() -> list[list[str]]:
    lines = [line for line in TABLE.read_text(encoding="utf-8").splitlines()
             if line.startswith("| ") and not line.startswith("| ---")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[1:]]


def link_target(href: str) -> Path:
    """A site link of the table -> the file in the repository it comes from (the chapters and
    the labs' READMEs are added to the site by tools/mkdocs_hooks.py)."""
    if href.startswith("chapters/"):
        return ROOT / href
    if m := re.fullmatch(r"labs/(lab\d+_\w+)\.md", href):
        return ROOT / "labs" / m[1] / "README.md"
    return ROOT / "docs" / href


def test_every_seed_section_has_a_row():
    sections = [r[0] for r in rows()]
    for wanted in SEED_SECTIONS:
        assert any(wanted.lower() in s.lower() for s in sections), \
            f"no row of docs/coverage.md covers the seed's '{wanted}'"


@pytest.mark.parametrize("row", rows(), ids=lambda r: r[0][:40])
def test_each_row_has_a_chapter_a_lab_and_code_that_exist(row):
    section, chapter, lab, code = row
    chapter_links = re.findall(r"\]\(([^)]+)\)", chapter)
    lab_links = re.findall(r"\]\(([^)]+)\)", lab)
    paths = re.findall(r"`([^`]+)`", code)
    assert chapter_links and all(h.startswith("chapters/") for h in chapter_links), \
        f"{section}: no chapter link in {chapter!r}"
    assert lab_links and all(h.startswith("labs/") for h in lab_links), \
        f"{section}: no lab link in {lab!r}"
    assert paths, f"{section}: no code path in {code!r}"
    for href in chapter_links + lab_links:
        assert link_target(href).is_file(), f"{section}: {href} points at nothing"
    for path in paths:
        assert (ROOT / path).exists(), f"{section}: {path} does not exist"


def test_lab_names_match_their_readmes():
    for row in rows():
        for title, href in re.findall(r"\[([^\]]+)\]\((labs/[^)]+)\)", row[2]):
            first = link_target(href).read_text(encoding="utf-8").splitlines()[0]
            assert first.lstrip("# ").startswith(title), f"{href}: '{title}' but its README " \
                                                         f"says '{first}'"


def test_the_home_page_and_the_nav_link_the_table():
    assert "(coverage.md)" in (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert "coverage.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
