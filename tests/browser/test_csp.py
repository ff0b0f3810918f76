"""The dashboard works under its own Content-Security-Policy (issue 12, item 4).

The shared `page` fixture bypasses CSP because Playwright's `wait_for_function` evaluates its
predicate with `new Function` in the page, which `script-src 'self'` forbids. This test opens
the dashboard and a live-then-ended run view with the CSP enforced, waiting only with
selectors, and fails on any console error or CSP violation (Plotly needs no eval)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

WATCH = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
  (event) => window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`));
"""


def test_the_dashboard_and_a_run_view_paint_under_the_csp(browser, server):
    run = server.start_run(name="csp", hidden=[32], epochs=2, interval_steps=10)
    server.wait(run["id"])
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda message: message.type == "error" and errors.append(message.text))
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.add_init_script(WATCH)
    try:
        response = tab.goto(server.url)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        tab.wait_for_selector("#runs, #run-list, main", timeout=30_000)
        tab.goto(f"{server.url}/#/run/{run['id']}")
        tab.wait_for_selector("#connection[data-state='ended']", timeout=60_000)
        tab.wait_for_selector("#heatmap-0[data-step]", timeout=60_000)
        tab.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)  # Plotly drew
        violations = tab.evaluate("window.__violations")
    finally:
        context.close()
    assert violations == [] and errors == [], (violations, errors)
