"""The README and docs/ pages: every relative link and anchor resolves, every cited file
exists, the README stays short, links every page, and says true things about the default run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dst_core.store.config import RunConfig
from dst_core.store.plan import plan_run
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.S)
# A path of this repository cited anywhere in the text: dst_core/store/plan.py, bench/stream.py.
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


# ---- what the pages show runs as written, and names what the code reads ------------------------
SETTING = re.compile(r"SPARSESCOPE_[A-Z_]+")
CODE = ["dst_core", "backend", "sparsescope.py", "bench", "examples"]
# Run before a page's block: the notebook's live view is stubbed, so no server starts and
# no display is needed; what it was asked to show is printed for the test to check.
STUB_SHOW = """
import sparsescope
def _show(target, **options):
    print("SHOWN", target, options.get("data_dir"))
sparsescope.show = _show
"""


def first_python_block(page: Path) -> str:
    found = re.search(r"```python\n(.*?)```", page.read_text(), re.S)
    assert found, f"{page.name} has no python block"
    return found.group(1)


@pytest.mark.parametrize("name", ["docs/library.md", "docs/notebooks.md", "README.md"])
def test_the_first_python_block_runs_as_written(name, tmp_path):
    block = first_python_block(REPO / name)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "SPARSESCOPE_DATA_DIR": str(tmp_path / "sparsescope-data")}
    result = subprocess.run([sys.executable, "-c", STUB_SHOW + block], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{name}:\n{result.stderr[-3000:]}"
    if "Recorder(" in block:  # it recorded a completed run, into the folder it names
        from dst_core.store import RunStore

        runs = RunStore(tmp_path / "sparsescope-data").list_runs()
        assert [run["status"] for run in runs] == ["completed"]
        if "sparsescope.show" in block:  # shown while it recorded, without a server
            assert f"SHOWN {runs[0]['id']} " in result.stdout
        assert not (tmp_path / "sparsescope-data" / "server.lock").exists()  # no server


def settings_read_by_the_code() -> set[str]:
    from backend.settings import Settings

    names = {Settings.model_config["env_prefix"] + field.upper() for field in Settings.model_fields}
    for root in CODE:
        path = REPO / root
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.suffix in (".py", ".ipynb") and "__pycache__" not in file.parts:
                names |= set(SETTING.findall(file.read_text(errors="replace")))
    return names


def test_operations_lists_every_setting_the_code_reads():
    page = (REPO / "docs" / "operations.md").read_text()
    table = page[page.index("## Settings"):]
    table = table[:table.index("\n## ", 1)]
    names = settings_read_by_the_code()
    assert "SPARSESCOPE_SPOOL_DIR" in names and "SPARSESCOPE_HOST" in names  # the scan works
    missing = sorted(name for name in names if f"| `{name}` |" not in table)
    assert not missing, f"docs/operations.md's settings table lacks {missing}"


def test_library_documents_every_driver_keyword():
    import inspect

    from dst_core import SparseDriver

    page = (REPO / "docs" / "library.md").read_text()
    start = page.index("**Driver options.**")
    table = page[start:page.index("It sparsifies every", start)]
    keywords = [name for name, parameter in inspect.signature(SparseDriver).parameters.items()
                if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
    assert "verify_every" in keywords
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    missing = [name for name in keywords
               if not any(f"`{name}`" in row.split(" | ")[0] for row in rows)]
    assert not missing, f"docs/library.md's driver options lack {missing}"


def test_no_project_file_cites_a_file_outside_the_project():
    """The design notes the project grew from are not shipped with it: a reader of a clone
    must find every file the code and the docs send them to."""
    outside = re.compile(r"\bDESIGN\.md\b|\bSTYLE\.md\b|\.\./shared/|\bshared/seed\b")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    cited = [f"{name}:{number}" for name in tracked
             if name.endswith((".py", ".md", ".js", ".html", ".toml", ".ipynb", "Makefile"))
             and name != "tests/test_docs.py"
             for number, line in enumerate((REPO / name).read_text(errors="replace")
                                           .splitlines(), 1) if outside.search(line)]
    assert cited == []
