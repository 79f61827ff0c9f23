"""Building a megatron-core GPTModel for a ModelSpec, and the process-group setup it needs."""

from __future__ import annotations

import atexit
import os
import random
import tempfile
from typing import Callable

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    HAVE_TE,
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec

from midtrain import cpu_compat
from midtrain.config import check_parallel_layout
from midtrain.kernels import CausalSDPAttention, SwiGLU, vocab_parallel_cross_entropy
from midtrain.spec import ModelSpec, RopeScaling, to_transformer_config


class LlamaGPTModel(GPTModel):
    """megatron's GPTModel; only its loss hook is replaced, by the same vocab-parallel
    cross entropy with a faster row maximum (`kernels.vocab_parallel_cross_entropy`).
    Modules, parameters and checkpoint keys are GPTModel's."""

    def compute_language_model_loss(self, labels: torch.Tensor,
                                    logits: torch.Tensor) -> torch.Tensor:
        # labels [b, s], logits [s, b, V/tp] -> per-token loss [b, s]
        loss = vocab_parallel_cross_entropy(logits, labels.transpose(0, 1).contiguous(),
                                            self.pg_collection.tp)
        return loss.transpose(0, 1).contiguous()


def local_layer_spec() -> ModuleSpec:
    """megatron's local layers (RMSNorm) with `midtrain.kernels` at its extension points."""
    layer_spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    layer_spec.submodules.self_attention.submodules.core_attention = CausalSDPAttention
    # Applied to the whole fc1 output because the config sets use_te_activation_func.
    layer_spec.submodules.mlp.submodules.activation_func = SwiGLU
    return layer_spec


def te_layer_spec() -> ModuleSpec:
    """TransformerEngine's fused layers (norms fused into the next linear layer, TE
    attention, TE's SwiGLU because the config sets use_te_activation_func)."""
    return get_gpt_layer_with_transformer_engine_spec(use_te_activation_func=True)


def choose_layer_spec(cuda: bool, te_available: bool) -> Callable[[], ModuleSpec]:
    """TE's layers where they can run (a GPU with TransformerEngine installed),
    megatron's local layers everywhere else."""
    return te_layer_spec if cuda and te_available else local_layer_spec


def build_gpt_model(spec: ModelSpec, bf16: bool = False, autocast: bool = True,
                    recompute_activations: bool = False) -> GPTModel:
    """A GPTModel with Llama layout (RMSNorm, SwiGLU, GQA, RoPE), sharded over the
    tensor-parallel group `init_distributed` set up; fp32, or bf16 mixed precision
    (GPU only; `autocast`: fp32 weights under autocast, else megatron's bf16 settings
    for a Float16Module, see `to_transformer_config`)."""
    cpu_compat.apply()
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        raise NotImplementedError("pipeline parallelism needs one GPTModel stage per rank "
                                  "(pre_process/post_process); build_gpt_model builds whole models")
    if bf16 and cpu_compat.on_cpu():
        raise ValueError("midtrain.bf16 needs a GPU (no CUDA here); on CPU midtrain trains in fp32")
    layer_spec = choose_layer_spec(not cpu_compat.on_cpu(), HAVE_TE)
    scaling = spec.rope_scaling
    # megatron-core hard-codes the Llama-3 low/high frequency factors and the
    # original context; other values would silently change positions.
    if scaling is not None and scaling.model_dump(exclude={"factor"}) != RopeScaling(
        factor=scaling.factor
    ).model_dump(exclude={"factor"}):
        raise ValueError(f"megatron-core supports only default Llama-3 rope scaling, got {scaling}")
    gpt = LlamaGPTModel(
        config=to_transformer_config(
            spec, tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
            transformer_engine=layer_spec is te_layer_spec, bf16=bf16, autocast=autocast,
            recompute_activations=recompute_activations,
            # Without CUDA every rank draws from the same seeded CPU generator (the
            # model-parallel CUDA RNG is a no-op), so shards drawn in place would be
            # identical copies; slicing full draws keeps them distinct.
            use_cpu_initialization=cpu_compat.on_cpu()),
        transformer_layer_spec=layer_spec(),
        vocab_size=spec.vocab_size,
        max_sequence_length=spec.max_position_embeddings,
        share_embeddings_and_output_weights=spec.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=spec.rope_theta,
        rope_scaling=scaling is not None,
        rope_scaling_factor=scaling.factor if scaling else 8.0,
    )
    if not cpu_compat.on_cpu():
        # megatron creates its linear layers on the current GPU, but the local spec's
        # RMSNorm is torch's, created on the default (CPU) device; megatron's own
        # training moves every module to the GPU the same way.
        gpt.cuda(torch.cuda.current_device())
    return gpt


def init_distributed(tensor_model_parallel_size: int = 1,
                     pipeline_model_parallel_size: int = 1) -> tuple[int, int]:
    """Join (or create) the process group and megatron's parallel state; return (rank, world).

    Under torchrun the environment names the group; a plain process gets a
    private one-rank gloo group on a file store, so concurrent runs on one
    machine never compete for a TCP port. Megatron's groups split the world into
    tensor x pipeline model replicas; the remaining factor is data parallel.
    """
    cpu_compat.apply()
    if not torch.distributed.is_initialized():
        backend = "gloo" if cpu_compat.on_cpu() else "nccl"
        if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
            if not cpu_compat.on_cpu():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            torch.distributed.init_process_group(backend)
        else:
            store_file = tempfile.NamedTemporaryFile(prefix="midtrain-pg-", delete=False).name
            atexit.register(os.unlink, store_file)
            store = torch.distributed.FileStore(store_file, 1)
            torch.distributed.init_process_group(backend, store=store, rank=0, world_size=1)
    world = torch.distributed.get_world_size()
    check_parallel_layout(world, tensor_model_parallel_size, pipeline_model_parallel_size)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size,
                                                 pipeline_model_parallel_size)
    initialized = (parallel_state.get_tensor_model_parallel_world_size(),
                   parallel_state.get_pipeline_model_parallel_world_size())
    if initialized != (tensor_model_parallel_size, pipeline_model_parallel_size):
        raise ValueError(f"this process already set up megatron with (tp, pp) = {initialized}, "
                         f"not ({tensor_model_parallel_size}, {pipeline_model_parallel_size})")
    return torch.distributed.get_rank(), world


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if not cpu_compat.on_cpu():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def micro_loss(model, tokens, labels, loss_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of masked per-token losses, number of loss tokens) for one micro batch."""
    # megatron's forward step enters the same autocast region from the same settings.
    with torch.autocast(tokens.device.type, dtype=model.config.autocast_dtype,
                        enabled=model.config.enable_autocast):
        per_token = model(tokens, None, None, labels=labels)  # [b, s]
    mask = loss_mask.to(per_token.dtype)
    return (per_token * mask).sum(), mask.sum()
