"""Head layouts read from the attention modules of models nobody here wrote."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from dst_core.heads import check_layout, head_layouts
from dst_core.prunable import plan_prunable


def layouts(model: nn.Module, declared=None) -> dict[str, dict]:
    return head_layouts(model, plan_prunable(model).layers, declared)


def test_gpt2_fused_qkv_and_its_output_projection():
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=48, n_head=6, vocab_size=32,
                                       n_positions=8, bos_token_id=0, eos_token_id=0))
    found = layouts(model)
    assert found["transformer.h.1.attn.c_attn.weight"] == \
        {"axis": "out", "parts": ["q", "k", "v"], "count": 6, "size": 8}
    assert found["transformer.h.1.attn.c_proj.weight"] == \
        {"axis": "in", "parts": None, "count": 6, "size": 8}
    assert not any("mlp" in name for name in found)  # an MLP has no heads


def test_llama_grouped_key_value_heads():
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=8, num_key_value_heads=2,
                                         vocab_size=32, bos_token_id=0, eos_token_id=0))
    found = layouts(model)
    prefix = "model.layers.0.self_attn"
    assert found[f"{prefix}.q_proj.weight"]["count"] == 8
    assert found[f"{prefix}.k_proj.weight"]["count"] == 2 == found[f"{prefix}.v_proj.weight"]["count"]
    assert found[f"{prefix}.o_proj.weight"] == {"axis": "in", "parts": None, "count": 8, "size": 4}


def test_bert_output_projection_finds_its_heads_beside_it():
    model = BertModel(BertConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                 num_attention_heads=2, vocab_size=32))
    found = layouts(model)
    assert found["encoder.layer.0.attention.output.dense.weight"]["count"] == 2
    assert "encoder.layer.0.output.dense.weight" not in found  # the MLP's output


def test_torch_multihead_attention_packed():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    found = layouts(layer)
    assert found["self_attn.in_proj_weight"] == {"axis": "out", "parts": ["q", "k", "v"],
                                                 "count": 2, "size": 8}


def test_declared_layouts_are_checked_against_the_shape():
    model = nn.Sequential(nn.Linear(8, 12), nn.Linear(12, 4))
    found = layouts(model, {"0.weight": {"axis": "out", "parts": ["q", "k", "v"], "count": 2,
                                         "size": 2}})
    assert found == {"0.weight": {"axis": "out", "parts": ["q", "k", "v"], "count": 2, "size": 2}}
    with pytest.raises(ValueError, match=r"heads\['0.weight'\]: 1 part\(s\) × 5 heads × 2 = 10"):
        layouts(model, {"0.weight": {"count": 5, "size": 2}})
    with pytest.raises(ValueError, match="heads: 'nope' named no sparsified"):
        layouts(model, {"nope": {"count": 1, "size": 12}})
    with pytest.raises(ValueError, match="axis must be 'out' or 'in'"):
        check_layout({"axis": "rows", "count": 1, "size": 12}, (12, 8))
    assert torch.is_tensor(model[0].weight)
