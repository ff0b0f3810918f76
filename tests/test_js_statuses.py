"""The dashboard's run statuses (frontend/js/statuses.js) are the server's: the same active and
final statuses, in the same order, so the page offers Stop and follows live exactly where the
server still records."""

from __future__ import annotations

import ast
import re

from tests.conftest import REPO

try:
    from dst_core.recording import ACTIVE_STATUSES, FINAL_STATUSES
except ImportError:  # the run store moved out of the writer package
    from dst_core.store import ACTIVE_STATUSES, FINAL_STATUSES

STATUSES_JS = REPO / "frontend" / "js" / "statuses.js"


def js_list(name: str) -> tuple[str, ...]:
    """The string literals of `export const NAME = Object.freeze([...]);` in statuses.js."""
    declaration = rf"^export const {name} = Object\.freeze\((\[[^\]]*\])\);"
    match = re.search(declaration, STATUSES_JS.read_text(), re.M)
    assert match, f"statuses.js declares no list {name}"
    return tuple(ast.literal_eval(match.group(1)))


def test_active_statuses_match():
    assert js_list("ACTIVE") == tuple(ACTIVE_STATUSES)


def test_final_statuses_match():
    assert js_list("FINAL") == tuple(FINAL_STATUSES)


def test_all_is_active_then_final():
    text = STATUSES_JS.read_text()
    assert re.search(r"^export const ALL = Object\.freeze\(\[\.\.\.ACTIVE, \.\.\.FINAL\]\);", text, re.M)
