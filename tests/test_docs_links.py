"""README and docs work from a clone: every relative link resolves inside the repository, anchors included, and
nothing points at a path of one machine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
MACHINE_PATHS = re.compile(r"(/work/|/home/|/tmp/|\.\./shared|shared/cxone-api\.md|shared/style\.md)")


def anchor_of(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def anchors(document: Path) -> set[str]:
    return {anchor_of(heading) for heading in HEADING.findall(document.read_text(encoding="utf-8"))}


def relative_links(document: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(document.read_text(encoding="utf-8"))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(document):
    broken = []
    for target in relative_links(document):
        path_part, _, fragment = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.is_relative_to(ROOT) or not linked.exists():
            broken.append(target)
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_path_of_one_machine(document):
    assert MACHINE_PATHS.findall(document.read_text(encoding="utf-8")) == []


# -- the README's project layout: every product file, one line each ------------------------------------------------

PRODUCT_FOLDERS = ("dags", "include", "plugins", "tools", "scripts", "deploy", "docs", ".astro", ".ci")
LOCAL_STATE = {".git", ".venv", ".airflow", "data", "artifacts", ".pytest_cache", "__pycache__", "build", ".env",
               "standalone"}  # git-ignored (.gitignore), never product files
LAYOUT_ENTRY = re.compile(r"^(?P<indent> *)- `(?P<name>[^`]+)`")


def product_files() -> set[str]:
    """The top-level files and every file under the product folders, as a clone has them."""
    def kept(path: Path) -> bool:
        parts = path.relative_to(ROOT).parts
        return not (LOCAL_STATE & set(parts) or path.suffix == ".pyc" or any(p.endswith(".egg-info") for p in parts)
                    or re.search(r"\.local\.ya?ml$", path.name))

    top = {p for p in ROOT.iterdir() if p.is_file()}
    nested = {p for folder in PRODUCT_FOLDERS for p in (ROOT / folder).rglob("*") if p.is_file()}
    return {str(p.relative_to(ROOT)) for p in top | nested if kept(p)}


def layout_entries(readme: str) -> list[str]:
    """The paths the README's "Project layout" tree names (folders end in ``/``), built from the bullets' nesting."""
    section = readme.split("\n## Project layout\n", 1)[1].split("\n## ", 1)[0]
    stack: list[str] = []
    entries = []
    for line in section.splitlines():
        match = LAYOUT_ENTRY.match(line)
        if match:
            depth = len(match["indent"]) // 2
            stack[depth:] = [match["name"]]
            entries.append("".join(stack))
    return entries


def test_the_readme_layout_lists_every_product_file_and_only_those():
    entries = layout_entries((ROOT / "README.md").read_text(encoding="utf-8"))
    listed = {e for e in entries if not e.endswith("/")}
    assert sorted(product_files() - listed) == [], "product files the README's layout does not list"
    assert sorted(e for e in entries if not (ROOT / e).exists()) == [], "listed in the README's layout, not in the tree"
    assert len(entries) == len(set(entries)), "listed twice"
