"""The READMEs are quickstarts and every link in them and in docs/ resolves.

Each README stays under 150 lines, names no commit hash (the docs may, where a figure needs its
provenance), and every relative link of README*.md and docs/**/*.md points to a file that exists,
and to a heading of it where the link names one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READMES = sorted(ROOT.glob("README*.md"))
PAGES = READMES + sorted((ROOT / "docs").rglob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HASH = re.compile(r"\b[0-9a-f]{7,40}\b")
MAX_README_LINES = 150


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [m.group(1) for m in LINK.finditer(text)]


def test_the_docs_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "README.zh-CN.md", "docs/glossary.md"} <= names, names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            broken.append(f"{target}: no file {where.relative_to(ROOT)}")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{target}: no heading #{anchor} in {where.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_readme_is_a_quickstart(readme):
    text = readme.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= MAX_README_LINES, f"{readme.name} has {len(lines)} lines"
    hashes = [h for h in HASH.findall(text) if re.search(r"\d", h) and re.search(r"[a-f]", h)]
    assert not hashes, f"{readme.name} names commit hashes {hashes}: move them to docs/"
    commands = re.findall(r"^make (\w+)", text, re.MULTILINE)
    assert commands[:3] == ["lab", "test", "course"], commands
    assert "docs/images/chat_widget.png" in text


def test_the_slug_matches_githubs():
    assert slug("Windows: WSL2") == "windows-wsl2"
    assert slug("在 Windows 上用 WSL2") == "在-windows-上用-wsl2"
    assert slug("Speed on your CPU: bf16 or fp32?") == "speed-on-your-cpu-bf16-or-fp32"
