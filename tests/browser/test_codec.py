"""The browser's decoder (frontend/js/codec.js) reads the golden protocol fixtures the Python
side writes and checks (tests/fixtures/protocol/, specified in docs/protocol.md)."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.browser.conftest import pixel_counts

pytestmark = pytest.mark.browser

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "protocol"
DECODE_VIEWS_JS = """async (answers) => {
  const { decodeView } = await import(window.sparsescope.modules + 'codec.js');
  return answers.map((answer) => {
    const view = decodeView(answer);
    return { gr: view.gr, gc: view.gc, kept: Array.from(view.kept), added: Array.from(view.added),
             removed: Array.from(view.removed), possible: Array.from(view.possible) };
  });
}"""


def test_view_answers_decode_to_the_binned_masks(page):
    fixture = json.loads((FIXTURES / "view.json").read_text())
    masks = [np.array(mask, bool) for mask in fixture["input"]["masks"]]
    steps = fixture["input"]["steps"]
    decoded = page.evaluate(DECODE_VIEWS_JS, [view["answer"] for view in fixture["views"]])
    assert len(decoded) == len(fixture["views"]) >= 2
    dtypes = set()
    for view, shown in zip(fixture["views"], decoded, strict=True):
        dtypes.add(view["answer"]["dtype"])
        rewire = max(i for i, step in enumerate(steps) if step <= view["answer"]["step"])
        now = masks[rewire]
        before = masks[rewire - 1] if rewire else now
        gr, gc = shown["gr"], shown["gc"]
        assert [gr, gc] == view["answer"]["grid"]
        active = np.array(shown["kept"]) + np.array(shown["added"])
        assert active.tolist() == pixel_counts(now, gr, gc).ravel().tolist()
        assert shown["added"] == pixel_counts(now & ~before, gr, gc).ravel().tolist()
        assert shown["removed"] == pixel_counts(before & ~now, gr, gc).ravel().tolist()
        assert shown["possible"] == pixel_counts(np.ones_like(now), gr, gc).ravel().tolist()
    assert "u1" in dtypes


def test_stream_messages_parse_as_json_and_bad_ones_are_refused(page):
    fixture = json.loads((FIXTURES / "messages.json").read_text())
    texts = [entry["message"] for entry in fixture["stored"]] + list(fixture["notices"].values())
    parsed = page.evaluate("""async (texts) => {
        const { parseMessage } = await import(window.sparsescope.modules + 'codec.js');
        return { good: texts.map(parseMessage), bad: [parseMessage('NaN'), parseMessage('{"a": 1}'),
                                                       parseMessage('[1]')] };
    }""", texts)
    assert parsed["good"] == [json.loads(text) for text in texts]
    assert parsed["bad"] == [None, None, None]


def test_a_view_of_the_wrong_length_is_an_error(page):
    answer = json.loads((FIXTURES / "view.json").read_text())["views"][0]["answer"]
    error = page.evaluate("""async (answer) => {
        const { decodeView } = await import(window.sparsescope.modules + 'codec.js');
        try { decodeView({ ...answer, grid: [answer.grid[0] + 1, answer.grid[1]] }); return null; }
        catch (e) { return e.message; }
    }""", answer)
    assert error and "bytes for" in error
