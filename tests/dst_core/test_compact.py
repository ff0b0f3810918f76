"""`dst_core.compact`: the same outputs as the masked dense model, in whichever format it picks."""

from __future__ import annotations

import importlib
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2Model

from dst_core import SparseDriver, compact, compact_layers

compact_module = importlib.import_module("dst_core.compact")  # `dst_core.compact` is the function


@pytest.fixture(autouse=True)
def fresh_timings():
    compact_module.clear_timing_cache()
    yield
    compact_module.clear_timing_cache()


def force(monkeypatch, winner: str | None, dense_ms: float = 1.0, winner_ms: float = 0.5,
          other_ms: float = 2.0) -> None:
    """Replace the timing with fixed figures: `winner` takes winner_ms, dense dense_ms."""
    def fake(fmt, run):
        run()  # still runs: a format that fails here must fail the test
        return dense_ms if fmt == "dense" else winner_ms if fmt == winner else other_ms
    monkeypatch.setattr(compact_module, "measure_format_ms", fake)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())


def sparse_mlp(method: str = "srigl", density: float = 0.05, bias: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(96, 128, bias=bias), nn.ReLU(), nn.Linear(128, 64, bias=bias),
                          nn.ReLU(), nn.Linear(64, 10, bias=bias))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    driver = SparseDriver(model, optimizer, method=method, density=density, total_steps=10,
                          distribution="uniform")
    return model, driver


@pytest.mark.parametrize("fmt", ["dense", "csr", "condensed"])
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_outputs_equal_the_masked_dense_model(monkeypatch, fmt, batch, bias):
    model, driver = sparse_mlp(bias=bias)
    force(monkeypatch, fmt)
    compacted = compact(model, driver, batch_size=batch)
    assert {layer["format"] for layer in compact_layers(compacted)} == {fmt}
    x = torch.randn(batch, 96)
    with torch.no_grad():
        want = model(x)
    assert relative_error(compacted(x), want) <= 1e-4
    # 3-D input (batch, positions, features), as a transformer feeds its projections
    x3 = torch.randn(2, 5, 96)
    with torch.no_grad():
        assert relative_error(compacted(x3), model(x3)) <= 1e-4


@pytest.mark.parametrize("fmt", ["dense", "csr", "condensed"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_conv_outputs_equal_the_masked_dense_model(monkeypatch, fmt, batch):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 8, 3, stride=2, padding=2, dilation=2, bias=False),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    driver = SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1), method="srigl",
                          density=0.2, total_steps=10, distribution="uniform")
    force(monkeypatch, fmt)
    x = torch.randn(batch, 3, 11, 11)
    compacted = compact(model, driver, batch_size=batch, example_input=x)
    convs = [layer for layer in compact_layers(compacted) if layer["kind"] == "conv"]
    assert [layer["format"] for layer in convs] == [fmt, fmt]
    assert isinstance(compacted[0], compact_module.CompactConv)
    with torch.no_grad():
        want = model(x)
    assert relative_error(compacted(x), want) <= 1e-4
    with torch.no_grad():  # an unbatched image
        assert relative_error(compacted[:3](x[0]), model[:3](x[0])) <= 1e-4


def test_conv_without_an_example_input_stays_dense_and_says_why():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten())
    with torch.no_grad():
        model[0].weight[:, :2] = 0
    compacted = compact(model)
    (layer,) = compact_layers(compacted)
    assert layer["format"] == "dense" and "example_input" in layer["reason"]
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert relative_error(compacted(x), model(x)) <= 1e-4


@pytest.mark.parametrize("fmt", ["csr", "condensed"])
def test_hf_conv1d_layers_of_gpt2_compact_with_equal_outputs(monkeypatch, fmt):
    torch.manual_seed(2)
    model = GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=100))
    model.eval()
    driver = SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1), method="srigl",
                          density=0.1, total_steps=10, distribution="uniform")
    assert {layer.kind for layer in driver.layers} == {"hf_conv1d"}
    force(monkeypatch, fmt)
    tokens = torch.randint(0, 100, (2, 16))
    compacted = compact(model, driver, batch_size=2, example_input=tokens)
    layers = compact_layers(compacted)
    assert len(layers) == 8 and {layer["format"] for layer in layers} == {fmt}
    assert all(layer["rows"] == 32 for layer in layers)  # 2 sequences × 16 positions
    assert isinstance(compacted.h[0].attn.c_attn, compact_module.CompactLinear)
    with torch.no_grad():
        want = model(tokens).last_hidden_state
        assert relative_error(compacted(tokens).last_hidden_state, want) <= 1e-4


def test_multihead_attention_keeps_its_module_with_masked_weights():
    torch.manual_seed(3)
    model = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True, dropout=0.0)
    model.eval()
    driver = SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1), method="rigl",
                          density=0.2, total_steps=10)
    compacted = compact(model, driver)
    kinds = {layer["kind"]: layer for layer in compact_layers(compacted)}
    assert kinds["attention_in_proj"]["reason"].startswith("kept its module")
    assert isinstance(compacted.linear1, compact_module.CompactLinear)
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        assert relative_error(compacted(x), model(x)) <= 1e-4
    buffer = io.BytesIO()  # its fast path reads linear1.weight: there after a load too
    torch.save(compacted, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert relative_error(reloaded(x), model(x)) <= 1e-4


@pytest.mark.parametrize("fmt", ["dense", "csr", "condensed"])
def test_weight_reads_as_the_masked_dense_weight_in_every_format(monkeypatch, fmt):
    model, driver = sparse_mlp()
    force(monkeypatch, fmt)
    compacted = compact(model, driver)
    buffer = io.BytesIO()
    torch.save(compacted, buffer)
    buffer.seek(0)
    for module in (compacted, torch.load(buffer, weights_only=False)):
        for index in (0, 2, 4):
            assert torch.equal(module[index].weight, model[index].weight.detach()
                               * driver.layers[index // 2].mask)


def test_bf16_condensed_is_exact_to_bf16_and_csr_is_dropped_where_unsupported(monkeypatch):
    model, driver = sparse_mlp()
    model = model.to(torch.bfloat16)
    force(monkeypatch, "condensed")
    compacted = compact(model, driver, batch_size=7)
    layers = compact_layers(compacted)
    assert {layer["format"] for layer in layers} == {"condensed"}
    x = torch.randn(7, 96, dtype=torch.bfloat16)
    with torch.no_grad():
        assert relative_error(compacted(x), model(x)) <= 1e-2


def test_the_chooser_falls_back_to_dense_when_nothing_beats_it(monkeypatch):
    model, driver = sparse_mlp()
    force(monkeypatch, None, dense_ms=1.0, other_ms=1.5)
    compacted = compact(model, driver)
    assert {layer["format"] for layer in compact_layers(compacted)} == {"dense"}
    assert all(layer["speedup"] == 1.0 for layer in compact_layers(compacted))
    # a sparse format within the margin of dense is noise: still dense
    assert compact_module.choose_format({"dense": 1.0, "csr": 0.97}) == "dense"
    assert compact_module.choose_format({"dense": 1.0, "csr": 0.5, "condensed": 0.4}) == "condensed"
    assert compact_module.choose_format({"dense": 1.0}) == "dense"


def test_a_format_that_gives_other_outputs_is_never_chosen(monkeypatch):
    model, driver = sparse_mlp()
    force(monkeypatch, "csr")
    original = compact_module._SparseRows.times

    def wrong(self, columns):
        out = original(self, columns)
        return out + 1.0 if self.format == "csr" else out
    monkeypatch.setattr(compact_module._SparseRows, "times", wrong)
    compacted = compact(model, driver)
    layers = compact_layers(compacted)
    assert all(layer["format"] != "csr" and "csr: output off" in layer["reason"] for layer in layers)


def test_condensed_needs_equal_fan_in():
    model, driver = sparse_mlp(method="rigl")  # unstructured: fan-in differs
    compacted = compact(model, driver, formats=["csr", "condensed"])
    sparse = [layer for layer in compact_layers(compacted) if layer["density"] < 1]
    assert sparse
    for layer in sparse:
        assert "condensed" not in layer["timings_ms"]
        assert "fan-in differs" in layer["reason"]
    with pytest.raises(ValueError, match="formats"):
        compact(model, driver, formats=["coo"])
    with pytest.raises(ValueError, match="batch_size"):
        compact(model, driver, batch_size=0)


def test_masks_come_from_the_weights_zeros_without_a_driver(monkeypatch):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 8))
    with torch.no_grad():
        model[0].weight[torch.rand(32, 32) > 0.1] = 0
    force(monkeypatch, "csr")
    compacted = compact(model)
    (layer,) = compact_layers(compacted)  # the dense second layer is left as it was
    assert layer["layer"] == "0.weight" and layer["format"] == "csr"
    assert isinstance(compacted[1], nn.Linear)
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert relative_error(compacted(x), model(x)) <= 1e-4


def test_inference_only_and_the_original_untouched():
    model, driver = sparse_mlp()
    model.train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    compacted = compact(model, driver)
    assert not compacted.training and model.training
    assert all(not parameter.requires_grad for parameter in compacted.parameters())
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    with pytest.raises(RuntimeError, match="inference-only"):
        compacted.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        compacted[0].train(True)
    compacted.eval()  # eval stays allowed


def test_print_names_each_layers_format_and_speedup(monkeypatch):
    model, driver = sparse_mlp()
    force(monkeypatch, "csr", dense_ms=1.0, winner_ms=0.25)
    text = str(compact(model, driver, batch_size=16))
    assert text.count("format=csr") == 3 and "speedup=4.00x" in text
    assert "dense 1.000 ms" in text and "at 16 rows" in text


def test_timings_are_cached_per_shape_density_and_batch(monkeypatch):
    calls = []

    def counting(fmt, run):
        calls.append(fmt)
        return 1.0
    monkeypatch.setattr(compact_module, "measure_format_ms", counting)
    model, driver = sparse_mlp()
    compact(model, driver, batch_size=4)
    first = len(calls)
    assert first == compact_module.ROUNDS * sum(  # every candidate of every layer, each round
        len(layer["timings_ms"]) for layer in compact_layers(compact(model, driver, batch_size=4)))
    assert len(calls) == first  # the second compact timed nothing
    compact(model, driver, batch_size=5)
    assert len(calls) == 2 * first


def train_rigl_mlp(density: float = 0.05):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="rigl", density=density, total_steps=60,
                          interval_steps=10)
    x, y = torch.randn(512, 64), torch.randint(0, 10, (512,))
    for step in range(60):
        batch = slice((step * 64) % 512, (step * 64) % 512 + 64)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        driver.step()
    return model, driver


def test_trained_rigl_mlp_saves_small_and_reloads_to_the_same_answers(tmp_path):
    model, driver = train_rigl_mlp()
    compacted = compact(model, driver, batch_size=16)
    x = torch.randn(16, 64)
    with torch.no_grad():
        want = model(x)
    got = compacted(x)
    assert relative_error(got, want) <= 1e-4
    path = tmp_path / "model.pt"
    torch.save(compacted, path)
    dense = io.BytesIO()
    torch.save(model.state_dict(), dense)
    assert path.stat().st_size <= dense.tell() / 4
    reloaded = torch.load(path, weights_only=False)
    assert torch.equal(reloaded(x), got)
    assert compact_layers(reloaded) == compact_layers(compacted)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_two_four_masks_on_cuda_may_run_semi_structured(monkeypatch, dtype):
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128)).cuda().to(dtype)
    driver = SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1), method="rigl",
                          density=0.5, total_steps=10, distribution="uniform", structure="n:m",
                          n=2, m=4)
    force(monkeypatch, "semi_structured")
    compacted = compact(model, driver, batch_size=64)
    layers = compact_layers(compacted)
    # chosen where torch's 2:4 kernels take the shape and dtype, else dropped with the reason
    assert all(layer["format"] == "semi_structured" or "semi_structured" in layer["reason"]
               for layer in layers)
    x = torch.randn(64, 128, device="cuda", dtype=dtype)
    with torch.no_grad():
        assert relative_error(compacted(x), model(x)) <= 1e-2
