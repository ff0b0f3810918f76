"""A Hugging Face GPT-2 and torch's own TransformerEncoder, built from their configs,
sparsified, recorded by a script and read back through the API as a user would."""

from __future__ import annotations

import base64

import numpy as np
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from dst_core import SparseDriver
from dst_core.recording import Recorder

EMBED, HEADS, VOCAB = 32, 4, 64


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=EMBED, n_head=HEADS, vocab_size=VOCAB,
                                      n_positions=16, bos_token_id=0, eos_token_id=0))


def test_gpt2_blocks_at_the_requested_density_and_its_embedding_untouched():
    model = gpt2()
    embedding = model.transformer.wte.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.2, total_steps=12,
                          interval_steps=2, distribution="uniform", first_layer_dense=False)
    assert len(driver.layers) == 4 * 2
    tokens = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(1))
    for _ in range(6):
        model(tokens, labels=tokens).loss.backward()
        driver.step()
        optimizer.zero_grad()
    for layer in driver.layers:
        assert layer.active_count == round(0.2 * layer.weight.numel())  # exact, per layer
        assert bool((layer.weight.detach()[~layer.mask] == 0).all())
    assert not torch.equal(model.transformer.wte.weight.detach(), embedding)  # it trained...
    assert float((model.transformer.wte.weight == 0).float().mean()) < 0.01  # ...dense
    assert "tied to the embedding transformer.wte.weight" in driver.summary()


def test_torch_encoder_packed_attention_is_sparsified():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2,
                                    enable_nested_tensor=False)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    driver = SparseDriver(encoder, optimizer, method="set", density=0.3, total_steps=4,
                          distribution="uniform")
    packed = encoder.layers[0].self_attn.in_proj_weight
    layer = next(layer for layer in driver.layers if layer.weight is packed)
    assert layer.active_count == round(0.3 * packed.numel())
    assert int((packed.detach() != 0).sum()) <= layer.active_count


def record_gpt2(data_dir) -> tuple[str, SparseDriver]:
    model = gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.25, total_steps=12,
                          interval_steps=2)
    tokens = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(2))
    with Recorder(data_dir, name="gpt2", keyframe_every=3, heartbeat_s=0) as recorder:
        recorder.attach(driver)
        for step in range(1, 9):
            loss = model(tokens, labels=tokens).loss
            loss.backward()
            driver.step()
            optimizer.zero_grad()
            recorder.log(step, loss=loss.item())
    return recorder.run_id, driver


def test_a_recorded_gpt2_reads_outputs_first_with_heads(client):
    run_id, driver = record_gpt2(client.app.state.store.data_dir)
    name = "transformer.h.1.attn.c_attn.weight"
    layer = next(layer for layer in driver.layers if layer.name == name)
    matrix = layer.mask.T.numpy()  # (3·n_embd outputs, n_embd inputs)
    rewires = client.get(f"/api/runs/{run_id}/rewires").json()
    meta = next(entry for entry in rewires["layers"] if entry["name"] == name)
    assert meta["weight_shape"] == [EMBED, 3 * EMBED] and meta["output_axis"] == 1
    last = rewires["steps"][-1]
    mask = client.get(f"/api/runs/{run_id}/mask", params={"layer": name, "step": last}).json()
    assert mask["shape"] == [3 * EMBED, EMBED]
    bits = np.unpackbits(np.frombuffer(base64.b64decode(mask["bits"]), np.uint8),
                         bitorder="little", count=matrix.size).astype(bool)
    assert np.array_equal(bits.reshape(matrix.shape), matrix)  # every delta transposed right
    topology = client.get(f"/api/runs/{run_id}/topology", params={"layer": name, "step": last})
    assert topology.status_code == 200, topology.text
    answer = topology.json()
    assert answer["shape"] == [3 * EMBED, EMBED]
    fan_in = dict(map(tuple, answer["fan_in"]))
    assert sum(fan_in.values()) == 3 * EMBED  # over its outputs
    assert sum(dict(map(tuple, answer["fan_out"])).values()) == EMBED  # over its inputs
    want_fan_in = np.bincount(matrix.sum(1))
    assert all(fan_in.get(degree, 0) == count for degree, count in enumerate(want_fan_in))
    heads = answer["heads"]
    assert [(head["part"], head["head"]) for head in heads] == \
        [(part, head) for part in "qkv" for head in range(HEADS)]
    assert sum(head["active"] for head in heads) == answer["active"] == int(matrix.sum())
    size = EMBED // HEADS
    for head in heads:
        offset = "qkv".index(head["part"]) * EMBED + head["head"] * size
        assert head["active"] == int(matrix[offset:offset + size].sum())
        assert head["density"] == head["active"] / (size * EMBED)
    proj = client.get(f"/api/runs/{run_id}/topology",
                      params={"layer": "transformer.h.1.attn.c_proj.weight", "step": last}).json()
    assert [head["part"] for head in proj["heads"]] == [None] * HEADS  # split by its inputs
    mlp = client.get(f"/api/runs/{run_id}/topology",
                     params={"layer": "transformer.h.1.mlp.c_fc.weight", "step": last}).json()
    assert mlp["heads"] is None


def test_a_stored_head_layout_that_does_not_fit_is_ignored(client):
    """Hostile stored data: a layout that does not tile the layer answers no heads, not 5xx."""
    store = client.app.state.store
    run_id = store.create_run({}, "hostile", status="running")["id"]
    from dst_core.events import keyframe_payload

    mask = torch.rand(6, 4, generator=torch.Generator().manual_seed(0)) < 0.5
    store.append_events(run_id, [
        ("meta", 0, {"layers": [{"name": "q.weight", "shape": [6, 4], "matrix": [6, 4],
                                 "density": 0.5, "heads": {"axis": "out", "count": 5, "size": 2}}]}),
        ("topology", 0, keyframe_payload("q.weight", 0, (6, 4), mask))])
    answer = client.get(f"/api/runs/{run_id}/topology", params={"layer": 0, "step": 0})
    assert answer.status_code == 200 and answer.json()["heads"] is None
