"""HF `LlamaForCausalLM` / `Qwen2ForCausalLM` <-> megatron-core `GPTModel` weights.

Layout differences (verified against transformers' Llama and Qwen2):
- megatron fuses q/k/v into `linear_qkv`, interleaved per KV group:
  [q heads of group 0, k_0, v_0, q heads of group 1, k_1, v_1, ...]; Qwen2's q/k/v biases
  the same way into `linear_qkv.bias`;
- megatron fuses gate and up projections into `linear_fc1` as [gate; up];
- RoPE needs no permutation: HF's rotate_half equals megatron's
  non-interleaved rotary embedding.

`hf_to_megatron` / `megatron_to_hf` work on full (unsharded) tensors named as in
the local layer spec. `megatron_weights` / `load_megatron_weights` move them out
of and into a live GPTModel: they gather / slice tensor-parallel shards and
translate TransformerEngine's fused-norm names, so the mapping above is the only
one, whatever the model's tensor parallelism or layer spec.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from safetensors.torch import load_file, save_file

from midtrain.checkpoint import load_checkpoint, read_spec, resolve_checkpoint, save_checkpoint
from midtrain.model import build_gpt_model, init_distributed
from midtrain.spec import ModelSpec

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
    "chat_template.jinja",
)

# Per-layer names that map one-to-one.
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attn.o_proj.weight": "self_attention.linear_proj.weight",
    "post_attention_layernorm.weight": "pre_mlp_layernorm.weight",
    "mlp.down_proj.weight": "mlp.linear_fc2.weight",
}


def hf_to_megatron(hf: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Map an HF Llama state dict to GPTModel parameter names and layouts."""
    groups, d, h = spec.num_kv_heads, spec.head_dim, spec.hidden_size
    q_per_group = spec.num_attention_heads // groups
    mc = {
        "embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
        "decoder.final_layernorm.weight": hf["model.norm.weight"],
    }
    if not spec.tie_embeddings:
        mc["output_layer.weight"] = hf["lm_head.weight"]
    for i in range(spec.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        for hf_name, mc_name in _LAYER_RENAMES.items():
            mc[dst + mc_name] = hf[src + hf_name]
        q = hf[src + "self_attn.q_proj.weight"].view(groups, q_per_group * d, h)
        k = hf[src + "self_attn.k_proj.weight"].view(groups, d, h)
        v = hf[src + "self_attn.v_proj.weight"].view(groups, d, h)
        mc[dst + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, h)
        if spec.qkv_bias:  # Qwen2: the biases interleave per query group like the weights
            q = hf[src + "self_attn.q_proj.bias"].view(groups, q_per_group * d)
            k = hf[src + "self_attn.k_proj.bias"].view(groups, d)
            v = hf[src + "self_attn.v_proj.bias"].view(groups, d)
            mc[dst + "self_attention.linear_qkv.bias"] = torch.cat([q, k, v], dim=1).reshape(-1)
        mc[dst + "mlp.linear_fc1.weight"] = torch.cat(
            [hf[src + "mlp.gate_proj.weight"], hf[src + "mlp.up_proj.weight"]], dim=0
        )
    return {k: v.detach().clone().contiguous() for k, v in mc.items()}


def megatron_to_hf(mc: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Inverse of `hf_to_megatron`; a tied model gets no `lm_head.weight` (HF ties on load)."""
    groups, d, h = spec.num_kv_heads, spec.head_dim, spec.hidden_size
    q_per_group = spec.num_attention_heads // groups
    hf = {
        "model.embed_tokens.weight": mc["embedding.word_embeddings.weight"],
        "model.norm.weight": mc["decoder.final_layernorm.weight"],
    }
    if not spec.tie_embeddings:
        hf["lm_head.weight"] = mc["output_layer.weight"]
    for i in range(spec.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        for hf_name, mc_name in _LAYER_RENAMES.items():
            hf[dst + hf_name] = mc[src + mc_name]
        qkv = mc[src + "self_attention.linear_qkv.weight"].view(groups, (q_per_group + 2) * d, h)
        q, k, v = torch.split(qkv, [q_per_group * d, d, d], dim=1)
        hf[dst + "self_attn.q_proj.weight"] = q.reshape(-1, h)
        hf[dst + "self_attn.k_proj.weight"] = k.reshape(-1, h)
        hf[dst + "self_attn.v_proj.weight"] = v.reshape(-1, h)
        if spec.qkv_bias:
            bias = mc[src + "self_attention.linear_qkv.bias"].view(groups, (q_per_group + 2) * d)
            q, k, v = torch.split(bias, [q_per_group * d, d, d], dim=1)
            hf[dst + "self_attn.q_proj.bias"] = q.reshape(-1)
            hf[dst + "self_attn.k_proj.bias"] = k.reshape(-1)
            hf[dst + "self_attn.v_proj.bias"] = v.reshape(-1)
        gate, up = torch.chunk(mc[src + "mlp.linear_fc1.weight"], 2, dim=0)
        hf[dst + "mlp.gate_proj.weight"] = gate
        hf[dst + "mlp.up_proj.weight"] = up
    return {k: v.detach().clone().contiguous() for k, v in hf.items()}


# TransformerEngine layers fuse the norms into the next linear layer
# (`self_attention.linear_qkv.layer_norm_weight`); megatron's local spec names the
# TE form of each of its norms (the checkpoint key map that keeps both specs'
# dist checkpoints interchangeable).
_LOCAL_NORM_OF_TE_NAME = {
    "." + te: "." + local for local, te in
    get_gpt_layer_local_spec().submodules.sharded_state_dict_keys_map.items()}


def local_spec_name(name: str) -> str:
    """The local-spec name of a parameter name (TE's fused-norm names translated)."""
    for te, local in _LOCAL_NORM_OF_TE_NAME.items():
        name = name.replace(te, local)
    return name


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters by state-dict name, with megatron's tensor-parallel
    attributes (`keep_vars`), without `_extra_state` entries."""
    return {k: v for k, v in model.state_dict(keep_vars=True).items()
            if not k.endswith("._extra_state")}


def _is_sharded(param: torch.Tensor) -> bool:
    return getattr(param, "tensor_model_parallel", False)


def _shard(full: torch.Tensor, param: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """This rank's slice of a full tensor, split the way megatron's CPU initialisation
    splits a master weight: `partition_stride` blocks along `partition_dim` (fc1's
    gate and up), each cut into one piece per rank."""
    dim, stride = param.partition_dim, param.partition_stride
    return torch.cat(full.chunk(size * stride, dim)[rank::size], dim)


def _unshard(shards: list[torch.Tensor], param: torch.Tensor) -> torch.Tensor:
    """Inverse of `_shard` given every rank's slice, in rank order."""
    dim, stride = param.partition_dim, param.partition_stride
    blocks = [shard.chunk(stride, dim) for shard in shards]
    return torch.cat([pieces[b] for b in range(stride) for pieces in blocks], dim)


def megatron_weights(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """A GPTModel's full parameters by local-spec name, on tensor-parallel rank 0
    (None on the other ranks). Collective over the model's tensor-parallel group."""
    tp = model.pg_collection.tp
    full = {}
    for name, param in _parameters(model).items():
        tensor = param.detach()
        if _is_sharded(param):
            shards = ([torch.empty_like(tensor) for _ in range(tp.size())]
                      if tp.rank() == 0 else None)
            torch.distributed.gather(tensor.contiguous(), shards, group=tp, group_dst=0)
            tensor = _unshard(shards, param) if shards else None
        full[local_spec_name(name)] = tensor
    return {k: v.cpu() for k, v in full.items()} if tp.rank() == 0 else None


def load_megatron_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy full local-spec-named `weights` into a GPTModel, each rank taking its
    tensor-parallel slice; every parameter must be covered exactly."""
    tp = model.pg_collection.tp
    params = _parameters(model)
    names = {local_spec_name(name): name for name in params}
    missing = sorted(names.keys() - weights.keys())
    unexpected = sorted(weights.keys() - names.keys())
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing}, "
                         f"unexpected {unexpected}")
    local = {}
    for local_name, full in weights.items():
        param = params[names[local_name]]
        local[names[local_name]] = (_shard(full, param, tp.rank(), tp.size())
                                    if _is_sharded(param) else full)
    model.load_state_dict(local, strict=False)


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """Load a local HF checkpoint's tensors (single or sharded safetensors, or a .bin)."""
    hf_dir = Path(hf_dir)
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights = {}
        for shard in shards:
            weights.update(load_file(hf_dir / shard))
        return weights
    if (hf_dir / "model.safetensors").exists():
        return load_file(hf_dir / "model.safetensors")
    if (hf_dir / "pytorch_model.bin").exists():
        return torch.load(hf_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{hf_dir}: no model.safetensors[.index.json] or pytorch_model.bin")


def import_hf(hf_dir: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec and megatron-layout weights of a local HF Llama directory."""
    spec = ModelSpec.from_hf_config(hf_dir)
    return spec, hf_to_megatron(read_hf_weights(Path(hf_dir)), spec)


def _special_token_ids(tokenizer_dir: Path) -> dict[str, int | None]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    }


def export_hf(model_or_weights, spec: ModelSpec, tokenizer_dir: str | Path | None,
              out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path | None:
    """Write an HF Llama directory (config.json, model.safetensors, tokenizer files), its
    weights stored as `dtype` (a run's training dtype).

    `model_or_weights` is a GPTModel or its full megatron-layout weights. A model's
    weights are gathered over its tensor-parallel group (every rank of the group
    calls this), and its rank 0 writes; the others return None. The directory is
    assembled beside `out_dir` and renamed into place, so a reader never sees a
    half-written export.
    """
    out_dir = Path(out_dir)
    weights = (model_or_weights if isinstance(model_or_weights, dict)
               else megatron_weights(model_or_weights))
    if weights is None:
        return None
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    token_ids = {}
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).exists():
                shutil.copy2(tokenizer_dir / name, staging / name)
        token_ids = _special_token_ids(tokenizer_dir)
    (staging / "config.json").write_text(json.dumps(
        spec.to_hf_config(str(dtype).removeprefix("torch."), **token_ids), indent=2))
    (staging / "generation_config.json").write_text(json.dumps(
        {k: v for k, v in token_ids.items() if v is not None}, indent=2))
    save_file({name: tensor.to(dtype) for name, tensor in megatron_to_hf(weights, spec).items()},
              staging / "model.safetensors",
              metadata={"format": "pt"})
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return out_dir


def hf_to_megatron_checkpoint(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert an HF Llama dir into a weights-only megatron checkpoint at
    `out_dir/state/step_00000000` (laid out like a midtrain run, so
    `train(init=out_dir)` and `megatron_checkpoint_to_hf(out_dir)` accept it)."""
    spec, weights = import_hf(hf_dir)
    init_distributed()
    model = build_gpt_model(spec)
    load_megatron_weights(model, weights)
    return save_checkpoint(Path(out_dir) / "state", 0, model, spec, None,
                           {"step": 0, "tokens": 0, "converted_from": str(hf_dir)})


def megatron_checkpoint_to_hf(checkpoint_or_run: str | Path, out_dir: str | Path,
                              tokenizer_dir: str | Path | None) -> Path:
    """Export a midtrain checkpoint (or a run's latest one) as an HF Llama dir."""
    ckpt = resolve_checkpoint(Path(checkpoint_or_run))
    spec = read_spec(ckpt)
    init_distributed()
    model = build_gpt_model(spec)
    load_checkpoint(ckpt, model, None)
    return export_hf(model, spec, tokenizer_dir, out_dir)
