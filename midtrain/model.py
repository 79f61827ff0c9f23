"""Building a megatron-core GPTModel for a ModelSpec, and the process-group setup it needs."""

from __future__ import annotations

import atexit
import os
import random
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.dot_product_attention import DotProductAttention

from midtrain import cpu_compat
from midtrain.spec import ModelSpec, RopeScaling, to_transformer_config


class CausalSDPAttention(DotProductAttention):
    """Megatron's core attention computed by torch's scaled_dot_product_attention.

    The stock local DotProductAttention materialises [b, n, s, s] scores, fills a
    boolean mask into them and repeats K/V per query group; on CPU that is about
    a third of a small model's step. SDPA applies the causal mask inside its
    kernel, so no mask tensor is built or passed. Padding masks are not
    supported: midprobe trains on packed GPTDataset samples.
    """

    def __init__(self, config, layer_number, attn_mask_type, attention_type, **kwargs):
        super().__init__(config, layer_number, attn_mask_type, attention_type, **kwargs)
        if config.window_size is not None or config.softmax_type != "vanilla":
            raise ValueError("CausalSDPAttention supports full causal vanilla softmax only")

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if attention_mask is not None or packed_seq_params is not None:
            raise ValueError("CausalSDPAttention is causal by construction; pass no mask")
        seq, batch = query.shape[0], query.shape[1]
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        with tensor_parallel.get_cuda_rng_tracker().fork():
            context = F.scaled_dot_product_attention(
                q, k, v,
                dropout_p=self.attention_dropout.p if self.training else 0.0,
                is_causal=True,
                scale=self.softmax_scale,
                enable_gqa=q.shape[1] != k.shape[1],
            )
        # [b, n, s, d] -> [s, b, n*d]
        return context.permute(2, 0, 1, 3).reshape(seq, batch, self.hidden_size_per_partition)


def build_gpt_model(spec: ModelSpec) -> GPTModel:
    """An fp32 GPTModel with Llama layout (local spec, RMSNorm, SwiGLU, GQA, RoPE)."""
    cpu_compat.apply()
    layer_spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    layer_spec.submodules.self_attention.submodules.core_attention = CausalSDPAttention
    scaling = spec.rope_scaling
    # megatron-core hard-codes the Llama-3 low/high frequency factors and the
    # original context; other values would silently change positions.
    if scaling is not None and scaling.model_dump(exclude={"factor"}) != RopeScaling(
        factor=scaling.factor
    ).model_dump(exclude={"factor"}):
        raise ValueError(f"megatron-core supports only default Llama-3 rope scaling, got {scaling}")
    return GPTModel(
        config=to_transformer_config(spec),
        transformer_layer_spec=layer_spec,
        vocab_size=spec.vocab_size,
        max_sequence_length=spec.max_position_embeddings,
        share_embeddings_and_output_weights=spec.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=spec.rope_theta,
        rope_scaling=scaling is not None,
        rope_scaling_factor=scaling.factor if scaling else 8.0,
    )


def init_distributed() -> tuple[int, int]:
    """Join (or create) the process group and megatron's parallel state; return (rank, world).

    Under torchrun the environment names the group; a plain process gets a
    private one-rank gloo group on a file store, so concurrent runs on one
    machine never compete for a TCP port.
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
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if not cpu_compat.on_cpu():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
