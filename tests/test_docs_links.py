"""Every relative link in README.md and docs/*.md points at a file that exists.

Markdown links, image links, reference definitions and HTML src/href attributes are checked; links to
http(s):, mailto: and pure #anchors are skipped, and `path#anchor` is checked for the path only. Code blocks
and inline code are ignored, so console output that happens to look like a link is not read as one.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest


def _repo_root() -> Path:
    here = Path(__file__).resolve().parent
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "README.md").is_file():
            return folder
    raise RuntimeError(f"no repository root above {here}")


ROOT = _repo_root()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[^\S\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# [text](target) and ![alt](target), with an optional "title"; <target> allows spaces.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
HTML_ATTR = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
SKIP = re.compile(r"^(?:https?:|mailto:|#)", re.I)


def strip_code(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def link_targets(text: str) -> list[str]:
    text = strip_code(text)
    found = [m.group(1) for pattern in (INLINE_LINK, REFERENCE, HTML_ATTR) for m in pattern.finditer(text)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in found]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in link_targets(page.read_text(encoding="utf-8")):
        if SKIP.match(target):
            continue
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if not path or not (page.parent / path).exists():
            broken.append(target)
    return broken


def test_the_docs_pages_exist():
    names = {p.name for p in PAGES}
    assert "README.md" in names
    assert len(PAGES) > 1, "no docs/*.md pages found"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} links to missing files"


def test_the_link_reader_finds_links_and_skips_code():
    text = (
        "See [a](docs/a.md#part), ![img](b.png \"t\"), [web](https://x.org), [top](#top).\n"
        "[ref]: c.md\n<img src=\"d.png\">\n"
        "```console\n[not](e.md)\n```\n"
        "and `[also not](f.md)` here.\n"
    )
    assert link_targets(text) == ["docs/a.md#part", "b.png", "https://x.org", "#top", "c.md", "d.png"]
