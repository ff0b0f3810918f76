"""What gets sparsified in models nobody here wrote: transformers built from their configs."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ViTConfig,
    ViTModel,
)

from dst_core.prunable import find_prunable, is_hf_conv1d, plan_prunable


def gpt2(layers: int = 2) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=32, n_head=4, vocab_size=64,
                                      n_positions=16, bos_token_id=0, eos_token_id=0))


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        vocab_size=64, bos_token_id=0, eos_token_id=0,
                                        tie_word_embeddings=True))


def test_gpt2_blocks_are_sparsified_and_its_tied_embedding_is_not():
    model = gpt2(layers=3)
    plan = plan_prunable(model)
    names = [entry.name for entry in plan.layers]
    roles = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert names == [f"transformer.h.{block}.{role}.weight" for block in range(3) for role in roles]
    assert all(entry.kind == "hf_conv1d" and entry.output_axis == 1 and entry.input_axis == 0
               for entry in plan.layers)
    c_attn = plan.layers[0]
    assert tuple(c_attn.weight.shape) == (32, 96)  # (in, out): 3 · n_embd outputs
    dense = {entry.name: entry.reason for entry in plan.left_dense}
    assert "tied to the embedding transformer.wte.weight" in dense["lm_head.weight"]
    assert dense["transformer.wpe.weight"].startswith("embedding")
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie the search saw
    assert plan.one_dimensional == sum(1 for p in model.parameters() if p.dim() == 1)


def test_hf_conv1d_is_recognised_by_its_layout_not_its_import():
    class Conv1D(nn.Module):  # a look-alike with the wrong layout is not taken for one
        def __init__(self):
            super().__init__()
            self.nf = 5
            self.weight = nn.Parameter(torch.zeros(5, 3))

    assert not is_hf_conv1d(Conv1D())
    assert is_hf_conv1d(gpt2().transformer.h[0].mlp.c_fc)


def test_llama_projections_and_a_tied_head():
    plan = plan_prunable(llama())
    roles = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert [entry.name for entry in plan.layers] == \
        [f"model.layers.{block}.{role}.weight" for block in range(2) for role in roles]
    dense = {entry.name: entry.reason for entry in plan.left_dense}
    assert "tied to the embedding model.embed_tokens.weight" in dense["lm_head.weight"]


def test_vit_and_bert_keep_their_embeddings_dense():
    vit = ViTModel(ViTConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                             num_attention_heads=4, image_size=32, patch_size=8))
    plan = plan_prunable(vit)
    assert plan.layers[0].kind == "conv"  # the patch projection
    assert sum(entry.kind == "linear" for entry in plan.layers) == 7  # q k v o fc1 fc2, pooler
    dense = {entry.name: entry.reason for entry in plan.left_dense}
    assert "include=['embeddings.cls_token']" in dense["embeddings.cls_token"]
    bert = plan_prunable(BertModel(BertConfig(num_hidden_layers=1, hidden_size=32,
                                              intermediate_size=64, num_attention_heads=4,
                                              vocab_size=64)))
    assert {entry.name for entry in bert.left_dense} == {
        "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight"}


def test_torch_attention_packed_and_separate_projections_are_sparsified():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2,
                                    enable_nested_tensor=False)
    plan = plan_prunable(encoder)
    assert [entry.name for entry in plan.layers if entry.kind == "attention_in_proj"] == \
        ["layers.0.self_attn.in_proj_weight", "layers.1.self_attn.in_proj_weight"]
    assert tuple(plan.layers[0].weight.shape) == (48, 16)
    separate = nn.MultiheadAttention(16, 4, kdim=8, vdim=12)
    assert [entry.name for entry in plan_prunable(separate).layers] == \
        ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]


def test_include_and_exclude_take_regular_expressions():
    model = gpt2(layers=3)
    attention = plan_prunable(model, include=r"h\.\d+\.attn\.c_attn")
    assert [entry.name for entry in attention.layers] == \
        [f"transformer.h.{block}.attn.c_attn.weight" for block in range(3)]
    assert all(entry.reason == "not named by include=" for entry in attention.left_dense
               if entry.name.startswith("transformer.h."))
    no_mlp = plan_prunable(model, exclude=[re.compile(r"mlp\.c_(fc|proj)")])
    assert len(no_mlp.layers) == 6 and all("attn" in entry.name for entry in no_mlp.layers)
    plain = find_prunable(model, include="h.1.")  # a plain substring still works
    assert [name for name, _ in plain] == [f"transformer.h.1.{role}.weight" for role in
                                           ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def test_include_names_any_parameter_with_its_output_axis():
    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.w_in = nn.Parameter(torch.randn(4, 8, 16))  # (expert, in, out)
            self.router = nn.Linear(8, 4)

    model = Experts()
    plan = plan_prunable(model, include={"w_in": 2, "router": None})
    entries = {entry.name: entry for entry in plan.layers}
    assert entries["w_in"].kind == "custom" and entries["w_in"].output_axis == 2
    assert entries["router.weight"].output_axis == 0
    assert [entry.name for entry in plan_prunable(model).left_dense] == ["w_in"]
    with pytest.raises(ValueError, match=r"include: output axis 3 of 'w_in'"):
        plan_prunable(model, include={"w_in": 3})


def test_an_include_pattern_that_matches_nothing_is_named():
    with pytest.raises(ValueError, match=r"include: 'attn\.q_proj' matched no parameter of "
                                         r"GPT2LMHeadModel"):
        plan_prunable(gpt2(), include=["c_attn", "attn.q_proj"])
    with pytest.raises(ValueError, match="include: patterns are non-empty strings"):
        plan_prunable(gpt2(), include=[""])


def test_an_embedding_is_sparsified_only_when_named():
    plan = plan_prunable(gpt2(), include=["lm_head", "c_fc"])
    names = [entry.name for entry in plan.layers]
    assert "lm_head.weight" in names and len(names) == 3  # the tie, named; and 2 c_fc


def test_dense_first_last_leaves_the_edges_of_the_default_search():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    plan = plan_prunable(model, dense_first_last=True)
    assert [entry.name for entry in plan.layers] == ["1.weight"]
    assert {entry.name for entry in plan.left_dense} == {"0.weight", "2.weight"}
