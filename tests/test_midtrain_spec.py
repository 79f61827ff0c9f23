"""Model shapes, HF config translation, megatron TransformerConfig, LR schedules."""

import json

import pytest

from midtrain.schedule import learning_rate
from midtrain.spec import MODEL_PRESETS, ModelSpec, RopeScaling, preset, to_transformer_config

# The published Llama-3.2-1B config.json (transformers 4.x keys).
LLAMA_32_1B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 128256,
}


def test_preset_sizes():
    assert 0.2e6 < preset("toy-xs").num_parameters() < 0.4e6
    assert 0.7e6 < preset("toy-s").num_parameters() < 1.2e6
    # Published sizes: 1.24B, 3.21B, 8.03B.
    assert MODEL_PRESETS["llama-3.2-1b"].num_parameters() == pytest.approx(1.236e9, rel=0.01)
    assert MODEL_PRESETS["llama-3.2-3b"].num_parameters() == pytest.approx(3.213e9, rel=0.01)
    assert MODEL_PRESETS["llama-3.1-8b"].num_parameters() == pytest.approx(8.030e9, rel=0.01)
    assert preset("toy-s", vocab_size=300).vocab_size == 300
    with pytest.raises(KeyError):
        preset("nope")


def test_from_hf_config_reads_published_llama_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_32_1B_CONFIG))
    assert ModelSpec.from_hf_config(tmp_path) == MODEL_PRESETS["llama-3.2-1b"]


@pytest.mark.parametrize("name", ["toy-s", "llama-3.1-8b"])
def test_hf_config_round_trips_through_transformers(tmp_path, name):
    from transformers import LlamaConfig

    spec = MODEL_PRESETS[name]
    LlamaConfig(**spec.to_hf_config()).save_pretrained(tmp_path)  # transformers' own format
    assert ModelSpec.from_hf_config(tmp_path) == spec


def test_invalid_shapes_are_rejected():
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelSpec(vocab_size=10, hidden_size=64, num_layers=1, num_attention_heads=4,
                  num_kv_heads=3, ffn_hidden_size=8)


def test_transformer_config_is_llama_like():
    spec = preset("toy-s").model_copy(update={"rope_scaling": RopeScaling(factor=8.0)})
    cfg = to_transformer_config(spec)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups,
            cfg.ffn_hidden_size, cfg.kv_channels) == (4, 128, 4, 2, 384, 32)
    assert cfg.normalization == "RMSNorm" and cfg.gated_linear_unit and not cfg.add_bias_linear
    assert cfg.layernorm_epsilon == spec.rms_norm_eps
    assert cfg.hidden_dropout == cfg.attention_dropout == 0.0


def lrs(schedule, total=100, warmup=10, decay_fraction=0.2):
    return [learning_rate(s, total_steps=total, warmup_steps=warmup, lr=1.0, min_lr=0.1,
                          schedule=schedule, decay_fraction=decay_fraction)
            for s in range(total)]


def test_schedules():
    constant = lrs("constant")
    assert constant[0] == pytest.approx(0.1) and constant[9:] == [1.0] * 91
    cosine = lrs("cosine")
    assert cosine[10] == 1.0 and cosine[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:]))
    wsd = lrs("wsd")
    assert wsd[10:81] == [1.0] * 71 and wsd[-1] == pytest.approx(0.1)
    assert wsd[90] == pytest.approx(1.0 - 0.9 * 10 / 19)
    decay = lrs("linear-decay", warmup=0)
    assert decay[0] == 1.0 and decay[-1] == pytest.approx(0.1)
    assert decay[50] == pytest.approx(1.0 - 0.9 * 50 / 99)
