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
