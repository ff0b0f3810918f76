"""The README and docs/ pages: every relative link and anchor resolves, every cited file
exists, the README stays short, links every page, and says true things about the default run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dst_core.config import RunConfig
from dst_core.plan import plan_run
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.S)
# A path of this repository cited anywhere in the text: dst_core/plan.py, bench/stream.py.
CITED = re.compile(r"(?<![\w/.-])((?:dst_core|backend|frontend|tests|bench|docs)/[\w./*-]*\w)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def links(page: Path) -> list[str]:
    return [target for target in LINK.findall(FENCE.sub("", page.read_text()))
            if not re.match(r"[a-z]+://|mailto:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_anchor_resolves(page):
    for target in links(page):
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if fragment:
            assert resolved.suffix == ".md", f"{page.name}: {target} anchors a non-page"
            assert fragment in anchors(resolved), f"{page.name}: no heading #{fragment} in {path}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_cited_file_exists(page):
    for cited in CITED.findall(page.read_text()):
        assert list(REPO.glob(cited)), f"{page.name} cites {cited}, which does not exist"


def test_the_readme_is_short_and_links_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    linked = {Path(target.partition("#")[0]).name for target in links(REPO / "README.md")}
    for page in PAGES[1:]:
        assert page.name in linked, f"README does not link docs/{page.name}"
    for command in ("make run", "make test"):
        assert command in readme.split("## ", 1)[0]  # leading, before the first section


def test_the_readme_says_how_long_the_default_run_is():
    readme = " ".join((REPO / "README.md").read_text().split())
    steps = int(re.search(r"The default run is ([\d,]+) steps", readme).group(1).replace(",", ""))
    assert steps == plan_run(RunConfig()).total_steps
    assert "about a minute" not in readme
