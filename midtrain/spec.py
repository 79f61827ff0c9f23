"""Llama-style model shapes and their megatron-core / HF config translations.
Torch-free at import (the memory plan reads shapes without torch); only
`to_transformer_config` imports torch and megatron."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator


class RopeScaling(BaseModel):
    """Llama-3 frequency-dependent RoPE scaling (HF `rope_type: llama3`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


class ModelSpec(BaseModel):
    """Shape of a Llama-style decoder (RMSNorm, SwiGLU, GQA, RoPE; biases on q, k and v only in
    Qwen2, the one difference between the two families)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_position_embeddings: int = 2048
    init_std: float = 0.02
    qkv_bias: bool = False  # True: a Qwen2 checkpoint

    @model_validator(mode="after")
    def _check_shape(self) -> "ModelSpec":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def num_parameters(self) -> int:
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        per_layer = h * (h + 2 * kv) + h * h + 3 * h * self.ffn_hidden_size + 2 * h
        per_layer += (h + 2 * kv) if self.qkv_bias else 0
        embeddings = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + embeddings + h

    @classmethod
    def from_hf_config(cls, path: str | Path) -> "ModelSpec":
        """Read a Llama or Qwen2 `config.json` (a file or the model directory containing it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        cfg = json.loads(path.read_text())
        model_type = cfg.get("model_type", "llama")
        if model_type not in ("llama", "qwen2"):
            raise ValueError(f"{path}: model_type {model_type!r} is not 'llama' or 'qwen2'")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ValueError(f"{path}: biased Llama variants are not supported")
        if cfg.get("use_sliding_window"):
            raise ValueError(f"{path}: sliding-window attention is not supported")
        # transformers >= 5 nests rope settings under rope_parameters; older ones use
        # top-level rope_theta / rope_scaling.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "llama3":
            scaling = RopeScaling(
                **{k: rope[k] for k in RopeScaling.model_fields if k in rope}
            )
        elif rope_type == "default":
            scaling = None
        else:
            raise ValueError(f"{path}: rope_type {rope_type!r} is not supported")
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        if head_dim * heads != cfg["hidden_size"]:
            raise ValueError(f"{path}: head_dim * heads != hidden_size is not supported")
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            ffn_hidden_size=cfg["intermediate_size"],
            rope_theta=rope_theta,
            rope_scaling=scaling,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_embeddings=cfg.get("tie_word_embeddings", False),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            init_std=cfg.get("initializer_range", 0.02),
            qkv_bias=model_type == "qwen2",
        )

    def to_hf_config(self, torch_dtype: str = "float32", **token_ids: int | None) -> dict:
        """A `LlamaForCausalLM` (or, with qkv_bias, `Qwen2ForCausalLM`) config.json dict of weights
        stored as `torch_dtype`; `token_ids` sets bos/eos/pad_token_id."""
        cfg = {
            "architectures": ["Qwen2ForCausalLM" if self.qkv_bias else "LlamaForCausalLM"],
            "model_type": "qwen2" if self.qkv_bias else "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.ffn_hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.init_std,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": 0.0,
            "torch_dtype": torch_dtype,
            # Legacy top-level keys: read by transformers 4.x and converted by 5.x.
            "rope_theta": self.rope_theta,
            "rope_scaling": (
                {"rope_type": "llama3", **self.rope_scaling.model_dump()}
                if self.rope_scaling
                else None
            ),
        }
        if self.qkv_bias:  # Qwen2's biases are fixed by its architecture, not configured
            del cfg["attention_bias"], cfg["mlp_bias"]
            cfg["use_sliding_window"] = False
        cfg.update({k: v for k, v in token_ids.items() if v is not None})
        return cfg


def _llama3(**kw) -> ModelSpec:
    return ModelSpec(
        vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
        max_position_embeddings=131072, init_std=0.02, **kw,
    )


MODEL_PRESETS: dict[str, ModelSpec] = {
    # Toy sizes for the CPU demo and tests; vocab matches the toy-world tokenizer
    # and is usually overridden with `preset(name, vocab_size=...)`.
    "toy-xs": ModelSpec(
        vocab_size=512, hidden_size=64, num_layers=4, num_attention_heads=4,
        num_kv_heads=2, ffn_hidden_size=256, tie_embeddings=True,
        max_position_embeddings=1024,
    ),
    "toy-s": ModelSpec(
        vocab_size=512, hidden_size=128, num_layers=4, num_attention_heads=4,
        num_kv_heads=2, ffn_hidden_size=384, tie_embeddings=True,
        max_position_embeddings=1024,
    ),
    "llama-3.2-1b": _llama3(
        hidden_size=2048, num_layers=16, num_attention_heads=32, num_kv_heads=8,
        ffn_hidden_size=8192, tie_embeddings=True, rope_scaling=RopeScaling(factor=32.0),
    ),
    "llama-3.2-3b": _llama3(
        hidden_size=3072, num_layers=28, num_attention_heads=24, num_kv_heads=8,
        ffn_hidden_size=8192, tie_embeddings=True, rope_scaling=RopeScaling(factor=32.0),
    ),
    "llama-3.1-8b": _llama3(
        hidden_size=4096, num_layers=32, num_attention_heads=32, num_kv_heads=8,
        ffn_hidden_size=14336, tie_embeddings=False, rope_scaling=RopeScaling(factor=8.0),
    ),
}


def preset(name: str, **overrides) -> ModelSpec:
    """A registered shape, optionally with fields replaced (e.g. the tokenizer's vocab)."""
    if name not in MODEL_PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(MODEL_PRESETS)}")
    return ModelSpec(**{**MODEL_PRESETS[name].model_dump(), **overrides})


def to_transformer_config(spec: ModelSpec, tensor_model_parallel_size: int = 1,
                          pipeline_model_parallel_size: int = 1, *,
                          transformer_engine: bool = False, bf16: bool = False,
                          autocast: bool = True, recompute_activations: bool = False,
                          use_cpu_initialization: bool = False):
    """megatron-core TransformerConfig for `spec` (fp32 weights, no dropout, biases only on q/k/v of Qwen2).

    `transformer_engine`: the layers come from TE's layer spec, which picks its own
    attention backend. `bf16`: bf16 mixed precision; with `autocast`, megatron's
    autocast settings (fp32 weights stay the optimizer's master copy), without it bf16
    parameters (megatron's Float16Module; fp32 main weights live in the optimizer).
    `recompute_activations`: megatron's full recomputation, one layer at a time
    (backward re-runs each layer's forward from its saved input). `use_cpu_initialization`:
    every rank draws the full weight and keeps its slice, so a tensor-parallel model
    starts from the same weights as a single-rank one.
    """
    import torch
    import torch.nn.functional as F
    from megatron.core.transformer.enums import AttnBackend
    from megatron.core.transformer.transformer_config import TransformerConfig

    from midtrain.kernels import install_rope_kernel

    install_rope_kernel()  # before TransformerConfig, which checks that a fused RoPE exists

    return TransformerConfig(
        num_layers=spec.num_layers,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_attention_heads,
        num_query_groups=spec.num_kv_heads,
        kv_channels=spec.head_dim,
        ffn_hidden_size=spec.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=spec.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=spec.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=spec.init_std,
        # midtrain.kernels: RoPE in megatron's fused-RoPE slot (TE's kernel when TE is
        # installed) and SwiGLU as the MLP's activation_func submodule (the layer spec
        # in midtrain.model); both compute the unfused fp32 expressions.
        apply_rope_fusion=True,
        use_te_activation_func=True,
        # The other fusions need TransformerEngine/Apex kernels; unfused is exact in fp32.
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        # Only the local backend works without TE; mixing backends in one process asserts.
        attention_backend=AttnBackend.auto if transformer_engine else AttnBackend.local,
        bf16=bf16,
        enable_autocast=bf16 and autocast,
        autocast_dtype=torch.bfloat16 if bf16 and autocast else None,
        recompute_granularity="full" if recompute_activations else None,
        recompute_method="uniform" if recompute_activations else None,
        recompute_num_layers=1 if recompute_activations else None,
        use_cpu_initialization=use_cpu_initialization,
    )
