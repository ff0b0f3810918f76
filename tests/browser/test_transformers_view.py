"""A Hugging Face GPT-2 recorded by a script, opened cold in the dashboard: the layer overview
is a grid of blocks × roles, a cell opens its layer, the c_attn panels carry a per-head strip
that counts what `/topology` counts, and the loss's change across each rewire is charted.
The grouping of layer names into blocks (frontend/js/blocks.js) is checked on the names of
GPT-2, LLaMA, BERT, ViT, torch's TransformerEncoder, ResNets and plain MLPs."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from dst_core import SparseDriver
from dst_core.recording import Recorder
from tests.browser.conftest import SCREENSHOTS, Server, screenshot, scrub
from tests.conftest import REPO

pytestmark = pytest.mark.browser

BLOCKS, HEADS, EMBED, VOCAB, STEPS = 3, 4, 32, 64, 16
ROLES = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def record_gpt2(data_dir) -> str:
    """A 3-block GPT-2 from its config, RigL every 2 steps, the loss logged at every step."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=BLOCKS, n_embd=EMBED, n_head=HEADS,
                                       vocab_size=VOCAB, n_positions=16, bos_token_id=0,
                                       eos_token_id=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.2, total_steps=STEPS,
                          interval_steps=2, drop_fraction=0.5)
    tokens = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(2))
    with Recorder(data_dir, name="tiny gpt-2", heartbeat_s=0) as recorder:
        recorder.attach(driver)
        for step in range(1, STEPS + 1):
            loss = model(tokens, labels=tokens).loss
            loss.backward()
            driver.step()
            optimizer.zero_grad()
            recorder.log(step, loss=loss.item())
    return recorder.run_id


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gpt2")


@pytest.fixture(scope="module")
def gpt2_run(data_dir):
    return record_gpt2(data_dir)


@pytest.fixture(scope="module")
def server(data_dir, gpt2_run):
    instance = Server(data_dir)
    yield instance
    instance.close()


def open_run(page, run_id):
    page.goto(f"{page.base_url}/#/run/{run_id}")
    page.wait_for_function("window.sparsescope.settled()"
                           " && document.querySelector('#heatmap-0')?.dataset.step",
                           timeout=60_000)


def test_blocks_grid_heads_strip_and_rewire_response(page, server, gpt2_run):
    rewires = server.http.get(f"/api/runs/{gpt2_run}/rewires").json()
    layers = rewires["layers"]
    newest = rewires["steps"][-1]
    assert [layer["name"] for layer in layers] == [
        f"transformer.h.{block}.{role}.weight" for block in range(BLOCKS) for role in ROLES]
    assert [layer["heads"] for layer in layers] == [True, True, False, False] * BLOCKS
    open_run(page, gpt2_run)

    # The overview: one grid cell per layer, by block and role.
    cells = page.eval_on_selector_all(
        "#block-grid [data-layer]",
        "cells => cells.map(c => [c.dataset.block, c.dataset.role, Number(c.dataset.layer)])")
    assert sorted(cells, key=lambda cell: cell[2]) == [
        [str(block), role, block * len(ROLES) + index]
        for block in range(BLOCKS) for index, role in enumerate(ROLES)]
    headers = page.eval_on_selector_all("#block-grid thead th", "ths => ths.map(t => t.textContent)")
    assert headers == ["block", *ROLES]  # roles as column headers, whole
    rows = page.eval_on_selector_all("#block-grid tbody th", "ths => ths.map(t => t.textContent)")
    assert rows == [str(block) for block in range(BLOCKS)]
    # Each cell reads the layer's density (%) at the rewire on screen.
    page.wait_for_function("document.querySelector('#block-grid [data-layer=\"0\"]').dataset.value")
    shown = float(page.locator("#block-grid [data-layer='0']").get_attribute("data-value"))
    topology = server.http.get(f"/api/runs/{gpt2_run}/topology",
                               params={"layer": 0, "step": newest}).json()
    assert shown == pytest.approx(topology["active"] / (3 * EMBED * EMBED))

    # The heads strip of the c_attn panel on screen: 3 × n_head cells, counted as /topology.
    page.wait_for_selector(f"#heatmap-0 ~ .head-strip[data-step='{newest}']", timeout=20_000)
    strip = page.locator("figure:has(#heatmap-0) .head-strip")
    heads = strip.locator(".head-cell").evaluate_all(
        "cells => cells.map(c => [c.dataset.part, Number(c.dataset.head), Number(c.dataset.active)])")
    assert len(heads) == 3 * HEADS
    assert heads == [[head["part"], head["head"], head["active"]] for head in topology["heads"]]
    assert strip.locator(".head-group").evaluate_all("g => g.map(e => e.dataset.part)") == ["q", "k", "v"]
    dead = sum(head["active"] == 0 for head in topology["heads"])
    assert strip.get_attribute("data-dead") == str(dead)
    assert strip.locator(".head-cell.dead").count() == dead
    title = strip.locator(".head-cell").first.get_attribute("title")
    assert title.startswith("q head 0: ") and "density" in title
    # The MLP panels have no strip, and no /topology was asked for a layer without heads.
    assert page.locator("figure:has(#heatmap-2) .head-strip").count() == 0
    asked = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)"
                          ".filter(n => n.includes('/topology?'))")
    heads_layers = {str(layer["index"]) for layer in layers if layer["heads"]}
    strips_asked = {url.split("layer=")[1].split("&")[0] for url in asked}
    assert "0" in strips_asked and strips_asked <= heads_layers  # (Topology's own layer 0 too)

    # The rewire response under the loss chart: a bar per rewire with a full window.
    response = server.http.get(f"/api/runs/{gpt2_run}/rewire-response",
                               params={"window": 2, "metric": "loss"}).json()
    assert len(response["rewires"]) >= 3
    page.wait_for_function("document.querySelector('#rewire-response-caption').dataset.window === '2'",
                           timeout=20_000)
    page.wait_for_function("(document.querySelector('#chart-rewire-response').data || [])"
                           ".reduce((n, t) => n + t.x.length, 0) > 0", timeout=20_000)
    drawn = page.evaluate("document.querySelector('#chart-rewire-response').data"
                          ".flatMap(t => t.x.map((x, i) => [x, t.y[i]]))")
    assert sorted(drawn) == sorted([row["step"], row["change"]] for row in response["rewires"])
    assert "2 steps" in page.locator("#rewire-response-caption").text_content()

    # Screenshots for docs/transformers.md.
    page.wait_for_timeout(400)  # the charts' throttled first draw
    screenshot(page, "transformer-blocks.png")
    strip.evaluate("e => e.scrollIntoView({block: 'center'})")
    strip.locator(".head-cell").nth(HEADS + 1).hover()  # the readout names the head
    page.locator("figure:has(#heatmap-0)").screenshot(path=str(SCREENSHOTS / "transformer-heads.png"))
    chart = page.locator(".chart-stack")
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    chart.screenshot(path=str(SCREENSHOTS / "rewire-response.png"))


def test_a_cell_opens_its_layer(page, server, gpt2_run):
    open_run(page, gpt2_run)
    index = 2 * len(ROLES) + ROLES.index("mlp.c_fc")  # block 2's c_fc, far down the page
    cell = page.locator("#block-grid [data-block='2'][data-role='mlp.c_fc']")
    assert cell.get_attribute("data-layer") == str(index)
    cell.click()
    page.wait_for_function(f"document.querySelector('#heatmap-{index}').dataset.step !== undefined",
                           timeout=20_000)
    panel = page.locator(f"figure:has(#heatmap-{index})")
    assert panel.is_visible() and "current" in panel.get_attribute("class")
    assert "current" in cell.get_attribute("class")
    assert page.locator(f"#heatmap-{index}").get_attribute("data-layer") == \
        "transformer.h.2.mlp.c_fc.weight"
    # Coloured by turnover instead: each cell reads the share of its layer added at the rewire.
    page.select_option("#block-colour", "turnover")
    turnover = page.eval_on_selector_all("#block-grid [data-layer]",
                                         "cells => cells.map(c => Number(c.dataset.value))")
    assert len(turnover) == BLOCKS * len(ROLES) and all(0 <= value <= 1 for value in turnover)
    assert any(value > 0 for value in turnover)
    assert "added" in page.locator(".block-legend").text_content()
    page.select_option("#block-colour", "density")
    # Scrubbing moves the strips with the player: the c_attn of block 2 at rewire 1.
    steps = server.http.get(f"/api/runs/{gpt2_run}/rewires").json()["steps"]
    page.locator("#block-grid [data-block='2'][data-role='attn.c_attn']").click()
    scrub(page, 1)  # as dragging does: the panel on screen stays on screen
    attn = 2 * len(ROLES)
    page.wait_for_selector(f"#heatmap-{attn} ~ .head-strip[data-step='{steps[1]}']", timeout=20_000)
    heads = server.http.get(f"/api/runs/{gpt2_run}/topology",
                            params={"layer": attn, "step": steps[1]}).json()["heads"]
    shown = page.locator(f"figure:has(#heatmap-{attn}) .head-cell").evaluate_all(
        "cells => cells.map(c => Number(c.dataset.active))")
    assert shown == [head["active"] for head in heads]


# ---- blocks.js: grouping names into blocks and roles ----------------------------------------
GPT2 = [f"transformer.h.{b}.{r}.weight" for b in range(2) for r in ROLES]
LLAMA = [f"model.layers.{b}.{r}.weight" for b in range(2)
         for r in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")] + ["lm_head.weight"]
BERT = [f"bert.encoder.layer.{b}.{r}.weight" for b in range(2)
        for r in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense", "intermediate.dense", "output.dense")] + \
    ["bert.pooler.dense.weight", "classifier.weight"]
VIT = ["vit.embeddings.patch_embeddings.projection.weight"] + \
    [f"vit.layers.{b}.{r}.weight" for b in range(2)
     for r in ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
               "mlp.fc1", "mlp.fc2")] + ["classifier.weight"]
TORCH_ENCODER = [f"layers.{b}.{r}" for b in range(2)
                 for r in ("self_attn.in_proj_weight", "self_attn.out_proj.weight",
                           "linear1.weight", "linear2.weight")]
RESNET = ["conv1.weight"] + [
    f"layer{stage}.{block}.{role}.weight" for stage in (1, 2) for block in range(2)
    for role in ("conv1", "conv2", "conv3") + (("downsample.0",) if block == 0 else ())] + \
    ["fc.weight"]
BENCH_RESNET = ["stem.weight"] + [f"blocks.{b}.{r}.weight" for b in range(12)
                                  for r in ("conv1", "conv2", "conv3")] + ["fc.weight"]


def block_table(names: list[str], groups: dict) -> dict:
    """{block: {role: name}} of a grouping, for readable expectations."""
    table: dict = {}
    for cell in groups["cells"]:
        assert names[cell["index"]] == cell["name"]
        table.setdefault(cell["block"], {})[cell["role"]] = cell["name"]
    return table


def group(page, lists: list[list[str]]) -> list:
    """groupBlocks of each list, run in node when it is installed, else in the page."""
    node = shutil.which("node")
    if node:
        script = ("import { groupBlocks } from " + json.dumps(str(REPO / "frontend/js/blocks.js"))
                  + "; console.log(JSON.stringify(" + json.dumps(lists) + ".map(groupBlocks)));")
        result = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)
    return page.evaluate("async (lists) => { const { groupBlocks } ="
                         " await import(window.sparsescope.modules + 'blocks.js');"
                         " return lists.map(groupBlocks); }", lists)


def test_group_blocks_by_name(page):
    gpt2, llama, bert, vit, encoder, resnet, bench, *plain = group(page, [
        GPT2, LLAMA, BERT, VIT, TORCH_ENCODER, RESNET, BENCH_RESNET,
        ["0.weight", "2.weight", "4.weight"],  # nn.Sequential MLP
        ["net.0.weight", "net.2.weight"], ["fc1.weight", "fc2.weight", "fc3.weight"],
        ["features.0.weight", "features.3.weight", "classifier.1.weight"], [],
        ["transformer.h.0.attn.c_attn.weight", "lm_head.weight"],  # one block: nothing repeats
    ])
    assert gpt2["blocks"] == ["0", "1"] and gpt2["roles"] == ROLES and gpt2["rest"] == []
    assert gpt2["pattern"] == "transformer.h.N"
    assert block_table(GPT2, gpt2)["1"]["mlp.c_fc"] == "transformer.h.1.mlp.c_fc.weight"

    assert llama["roles"] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                              "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert llama["blocks"] == ["0", "1"] and llama["rest"] == [{"index": 14, "name": "lm_head.weight"}]

    assert bert["roles"][:4] == ["attention.self.query", "attention.self.key",
                                 "attention.self.value", "attention.output.dense"]
    assert [layer["name"] for layer in bert["rest"]] == ["bert.pooler.dense.weight", "classifier.weight"]
    assert block_table(BERT, bert)["0"]["output.dense"] == "bert.encoder.layer.0.output.dense.weight"

    assert vit["pattern"] == "vit.layers.N" and len(vit["cells"]) == 12
    assert [layer["index"] for layer in vit["rest"]] == [0, 13]

    assert encoder["roles"] == ["self_attn.in_proj_weight", "self_attn.out_proj", "linear1", "linear2"]

    # ResNet stages join the block index: rows 1.0, 1.1, 2.0, 2.1; the stem and fc outside.
    assert resnet["blocks"] == ["1.0", "1.1", "2.0", "2.1"] and resnet["pattern"] == "layerS.N"
    assert resnet["roles"] == ["conv1", "conv2", "conv3", "downsample.0"]
    assert block_table(RESNET, resnet)["2.0"]["downsample.0"] == "layer2.0.downsample.0.weight"
    assert "downsample.0" not in block_table(RESNET, resnet)["2.1"]
    assert [layer["name"] for layer in resnet["rest"]] == ["conv1.weight", "fc.weight"]

    assert bench["blocks"] == [str(b) for b in range(12)]  # numeric order: 10 after 9
    assert [layer["name"] for layer in bench["rest"]] == ["stem.weight", "fc.weight"]

    assert plain == [None] * 6  # no repeated blocks: the list stays
