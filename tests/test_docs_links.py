"""Every relative link in README.md and docs/ leads somewhere: the file exists, and a
``#anchor`` names a heading of that file (GitHub's anchor rule: lower case, punctuation other
than ``-`` and ``_`` dropped, spaces to ``-``, repeats numbered ``-1``, ``-2``). Pages move
between the guide and the results; a reader who follows a dead link is lost."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (links there are examples, not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    text = re.sub(r"`|\*\*|\*", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its words
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: Counter[str] = Counter()
    found = set()
    for line in _prose_lines(page.read_text()):
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if not match:
            continue
        base = github_anchor(match.group(1))
        found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def test_github_anchor_follows_githubs_rule():
    assert github_anchor("Coverage: choosing the default (2026-12-03)") == "coverage-choosing-the-default-2026-12-03"
    assert github_anchor("`digits-ncsn` (NCSN, 11 levels 4.81 -> 0.08)") == "digits-ncsn-ncsn-11-levels-481---008"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for line in _prose_lines(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            destination = (page.parent / path).resolve() if path else page
            if not destination.exists():
                shown = destination.relative_to(REPO) if REPO in destination.parents else destination
                broken.append(f"{target}: no file {shown}")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{target}: no heading with anchor #{anchor} in {destination.name}")
    assert not broken, "\n".join(broken)
