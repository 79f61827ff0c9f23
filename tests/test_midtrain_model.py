"""Which megatron layers build_gpt_model uses where, and the settings that go with them.

This machine has no CUDA, so the GPU branches (TransformerEngine layers, bf16) are
checked as choices, configs and names only; nothing here runs a TE layer.
"""

import re

import pytest
import torch
from megatron.core.transformer.enums import AttnBackend

from midtrain.convert import local_spec_name, megatron_weights
from midtrain.kernels import CausalSDPAttention
from midtrain.model import (build_gpt_model, choose_layer_spec, init_distributed,
                            local_layer_spec, te_layer_spec)
from midtrain.spec import preset, to_transformer_config

SPEC = preset("toy-xs", vocab_size=64)


@pytest.fixture(scope="module", autouse=True)
def megatron_env():
    torch.set_num_threads(1)
    init_distributed()


@pytest.mark.parametrize("cuda,te_available,expected", [
    (True, True, te_layer_spec),
    (True, False, local_layer_spec),
    (False, True, local_layer_spec),
    (False, False, local_layer_spec),
])
def test_transformer_engine_layers_only_on_a_gpu_with_te(cuda, te_available, expected):
    assert choose_layer_spec(cuda, te_available) is expected


def test_this_machine_builds_local_layers_with_midtrain_kernels():
    layer = build_gpt_model(SPEC).decoder.layers[0]
    assert isinstance(layer.self_attention.core_attention, CausalSDPAttention)


def test_transformer_engine_and_bf16_settings():
    local = to_transformer_config(SPEC)
    assert local.attention_backend == AttnBackend.local
    assert not (local.bf16 or local.enable_autocast) and local.params_dtype == torch.float32
    gpu = to_transformer_config(SPEC, transformer_engine=True, bf16=True)
    assert gpu.attention_backend == AttnBackend.auto
    assert gpu.bf16 and gpu.enable_autocast and gpu.autocast_dtype == torch.bfloat16
    assert gpu.params_dtype == torch.float32  # AdamW updates fp32 master weights


def test_transformer_engine_norm_names_map_to_local_spec_names():
    """TE fuses the norms into the next linear layer; its parameter names are the
    checkpoint keys megatron gives the local spec's norms (layer-stacked)."""
    assert (local_spec_name("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight")
            == "decoder.layers.3.input_layernorm.weight")
    assert (local_spec_name("decoder.layers.3.mlp.linear_fc1.layer_norm_weight")
            == "decoder.layers.3.pre_mlp_layernorm.weight")
    model = build_gpt_model(SPEC)
    checkpoint_keys = {v.key for k, v in model.sharded_state_dict().items()
                       if not k.endswith("._extra_state")}
    assert "decoder.layers.self_attention.linear_qkv.layer_norm_weight" in checkpoint_keys
    stacked_local_names = {re.sub(r"layers\.\d+\.", "layers.", k)
                           for k in megatron_weights(model)}
    assert {local_spec_name(k) for k in checkpoint_keys} == stacked_local_names
