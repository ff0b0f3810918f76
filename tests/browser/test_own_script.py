"""Your own training loop, end to end, as issue 13's "done when" reads: a short script of your
own (a small CNN with BatchNorm, RigL at density 0.2 rewired every 10 steps, a Recorder with no
config, `rec.log` and `rec.eval`) writes into the folder a running server serves; the runs
list names it by what it ran, and its test accuracy is charted while it trains and in replay."""

import subprocess
import sys

import pytest

from tests.browser.conftest import Server, watch_console
from tests.conftest import REPO

pytestmark = pytest.mark.browser

SCRIPT = """
import sys, time
from pathlib import Path
import torch
from torch import nn
from sklearn.datasets import load_digits
from dst_core import SparseDriver
from dst_core.recording import Recorder

class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8 * 4 * 4, 10)
    def forward(self, x):
        return self.head(nn.functional.max_pool2d(self.conv(x), 2).flatten(1))

digits = load_digits()
x = torch.tensor(digits.images / 16, dtype=torch.float32).unsqueeze(1)
y = torch.tensor(digits.target)
torch.manual_seed(0)
model = DigitsCNN()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
driver = SparseDriver(model, optimizer, method="rigl", density=0.2, interval_steps=10,
                      total_steps=8 * 22)
with Recorder(sys.argv[1], name="my own cnn") as rec:
    rec.attach(driver)
    for epoch in range(8):
        for batch in torch.randperm(1400).split(64):
            loss = nn.functional.cross_entropy(model(x[:1400][batch]), y[:1400][batch])
            optimizer.zero_grad()
            loss.backward()
            driver.step()
            rec.log(driver.step_count, loss=loss.item())
        with torch.no_grad():
            model.eval()
            logits = model(x[1400:])
            model.train()
        rec.eval(driver.step_count, test_accuracy=(logits.argmax(1) == y[1400:]).float().mean().item())
        if epoch == 3:  # still training until the test has seen it live (at most a minute)
            release = Path(sys.argv[2])
            for _ in range(600):
                if release.exists():
                    break
                time.sleep(0.1)
"""

ACCURACY_POINTS = ("(() => { const chart = document.querySelector('#chart-accuracy');"
                   " const trace = (chart.data || []).find(t => t.name === 'test accuracy');"
                   " return trace ? trace.x.length : 0; })()")


@pytest.fixture
def own_server(tmp_path):
    instance = Server(tmp_path / "data")
    yield instance, tmp_path / "data"
    instance.close()


def test_a_users_own_script_is_listed_by_what_it_ran_and_charted_live_and_in_replay(
        browser, own_server, tmp_path):
    server, data_dir = own_server
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    release = tmp_path / "seen-live"
    trainer = subprocess.Popen([sys.executable, str(script), str(data_dir), str(release)], cwd=REPO,
                               env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                    "OMP_NUM_THREADS": "1"})
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    page = context.new_page()
    errors = watch_console(page)
    try:
        page.goto(f"{server.url}/#/runs")
        row = page.locator("#runs-body tr", has_text="my own cnn")
        row.wait_for(timeout=60_000)
        cells = row.locator("td").all_text_contents()
        assert cells[3].startswith("custom: DigitsCNN (") and cells[4] == "rigl"
        assert cells[5] == "20%", cells
        run_id = row.get_attribute("data-run-id")
        page.goto(f"{server.url}/#/run/{run_id}")
        # Live: test accuracy points arrive while the script still trains.
        page.wait_for_function(f"{ACCURACY_POINTS} >= 2", timeout=60_000)  # 4 exist by now
        assert trainer.poll() is None, "the script ended before its run was seen live"
        assert page.locator("#status").get_attribute("data-status") == "running"
        release.touch()  # let it finish its last four epochs
        assert trainer.wait(timeout=120) == 0
        page.wait_for_function("document.querySelector('#status').dataset.status === 'completed'",
                               timeout=30_000)
        # Replay: a fresh page on the finished run charts every evaluation.
        page.goto("about:blank")
        page.goto(f"{server.url}/#/run/{run_id}")
        page.wait_for_function(f"{ACCURACY_POINTS} === 8", timeout=30_000)
        run = server.http.get(f"/api/runs/{run_id}").json()
        assert run["settings"]["method"] == "rigl" and run["settings"]["density"] == 0.2
        assert run["config"] == {} and run["summary"]["best_test_accuracy"] > 0.5
        assert errors == []
    finally:
        if trainer.poll() is None:
            trainer.kill()
        context.close()
