"""Plain-torch kernels plugged into megatron-core's own extension points.

Without TransformerEngine or Apex, megatron's local layer spec computes
attention, RoPE and SwiGLU with generic unfused torch code that copies more
than the math needs. Each replacement here is installed where megatron expects
an optimised kernel, so megatron's layers, weights and checkpoints stay stock:

- `CausalSDPAttention`: the layer spec's `core_attention` submodule.
- `rotary_embedding`: the kernel behind `TransformerConfig.apply_rope_fusion`
  (megatron's `rope_utils.fused_apply_rotary_pos_emb`, normally TE's).
- `SwiGLU`: the MLP's `activation_func` submodule, used with
  `TransformerConfig.use_te_activation_func` (a module applied to the whole
  fc1 output instead of megatron's chunk-then-silu glu).
- `vocab_parallel_cross_entropy`: megatron's vocab-parallel loss with the
  row maximum taken by `amax`; `midtrain.model.LlamaGPTModel` returns it from
  GPTModel's `compute_language_model_loss` hook.

All three compute the same fp32 expressions as the code they replace, so
conversion against transformers' Llama stays within float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings import rope_utils
from megatron.core.tensor_parallel.cross_entropy import VocabParallelCrossEntropy
from megatron.core.tensor_parallel.utils import VocabUtility
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.module import MegatronModule


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
        # [s, b, n, d] -> [b, n, s, d]; for rotated q/k this is a free view (see
        # _RotaryEmbedding), so SDPA reads them without a layout copy.
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


class _RotaryEmbedding(torch.autograd.Function):
    """y = t·cos + rotate_half(t)·sin with rotate_half(t) = [-t2, t1] (non-interleaved).

    Megatron's unfused version builds rotate_half with a concatenation and then
    concatenates the (empty) unrotated tail back on, copying every q/k twice per
    layer and again in backward. Here the halves are written in place, and the
    output is allocated in [b, n, s, d] memory order (returned as an [s, b, n, d]
    view) because that is the layout attention consumes.
    """

    @staticmethod
    def forward(ctx, t, freqs):
        half = t.shape[-1] // 2
        cos, sin = torch.cos(freqs).to(t.dtype), torch.sin(freqs).to(t.dtype)
        seq, batch, heads, dim = t.shape
        out = t.new_empty(batch, heads, seq, dim).permute(2, 0, 1, 3)
        torch.mul(t, cos, out=out)
        out[..., :half].sub_(t[..., half:] * sin[..., :half])
        out[..., half:].add_(t[..., :half] * sin[..., half:])
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, grad):
        # The transpose of the rotation: dt1 = g1·cos1 + g2·sin2, dt2 = g2·cos2 - g1·sin1.
        cos, sin = ctx.saved_tensors
        half = grad.shape[-1] // 2
        grad_t = grad * cos
        grad_t[..., :half].add_(grad[..., half:] * sin[..., half:])
        grad_t[..., half:].sub_(grad[..., :half] * sin[..., :half])
        return grad_t, None


def rotary_embedding(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool = False,
                     transpose_output_memory: bool = False) -> torch.Tensor:
    """RoPE on t [s, b, n, d] with freqs [s, 1, 1, d] (megatron's fused-RoPE signature)."""
    if interleaved:
        raise ValueError("rotary_embedding implements non-interleaved (Llama/HF) RoPE only")
    if freqs.shape[-1] != t.shape[-1]:
        raise ValueError(f"partial RoPE is not supported: freqs dim {freqs.shape[-1]}, "
                         f"head dim {t.shape[-1]}")
    return _RotaryEmbedding.apply(t, freqs)


def install_rope_kernel() -> None:
    """Make `apply_rope_fusion=True` use `rotary_embedding` unless TransformerEngine
    already provides megatron's fused RoPE (then TE's kernel is kept)."""
    if rope_utils.fused_apply_rotary_pos_emb is None:
        rope_utils.fused_apply_rotary_pos_emb = rotary_embedding


class _SwiGLU(torch.autograd.Function):
    """silu(x1)·x2 for x = [x1, x2] (megatron's fc1 output: [gate; up]).

    Autograd through megatron's chunk-based glu runs silu on a strided view and
    concatenates the two half-gradients in backward; this writes both halves of
    the gradient straight into one buffer.
    """

    @staticmethod
    def forward(ctx, x):
        gate, up = torch.chunk(x, 2, dim=-1)
        activated = F.silu(gate)
        ctx.save_for_backward(x, activated)
        return activated * up

    @staticmethod
    def backward(ctx, grad):
        x, activated = ctx.saved_tensors
        gate, up = torch.chunk(x, 2, dim=-1)
        grad_x = torch.empty_like(x)
        grad_gate, grad_up = torch.chunk(grad_x, 2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        torch.mul(grad, activated, out=grad_up)
        return grad_x


class SwiGLU(MegatronModule):
    """The MLP `activation_func` submodule: SwiGLU over the whole fc1 output.

    A MegatronModule so the MLP's sharded_state_dict walk finds the (empty)
    checkpoint contribution it asks every child for.
    """

    def __init__(self, config):
        super().__init__(config)
        if not (config.gated_linear_unit and config.activation_func is F.silu):
            raise ValueError("SwiGLU needs gated_linear_unit=True and activation_func=F.silu")
        if config.activation_func_clamp_value is not None or config.glu_linear_offset != 0.0:
            raise ValueError("SwiGLU implements the plain Llama gate (no clamp or offset)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SwiGLU.apply(x)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """megatron's `tensor_parallel.vocab_parallel_cross_entropy` (no label smoothing),
    built from its own VocabParallelCrossEntropy steps, except that the row maximum
    is `amax`: megatron's `torch.max(dim=-1)` also computes argmax indices it drops,
    ~10x slower on CPU. The maximum is the same value, so losses and gradients
    are bitwise those of megatron's function."""

    @staticmethod
    def forward(ctx, logits, target, tp_group):
        logits = logits.float()
        logits_max = logits.amax(dim=-1)
        torch.distributed.all_reduce(logits_max, op=torch.distributed.ReduceOp.MAX,
                                     group=tp_group)
        vocab_start, vocab_end = VocabUtility.vocab_range_from_per_partition_vocab_size(
            logits.shape[-1], tp_group.rank(), tp_group.size())
        target_mask, masked_target_1d, predicted_logits, sum_exp_logits, exp_logits = (
            VocabParallelCrossEntropy.calculate_predicted_logits(
                logits, target, logits_max, vocab_start, vocab_end))
        torch.distributed.all_reduce(predicted_logits, group=tp_group)
        torch.distributed.all_reduce(sum_exp_logits, group=tp_group)
        softmax, loss = VocabParallelCrossEntropy.calculate_cross_entropy_loss(
            exp_logits, predicted_logits, sum_exp_logits)
        ctx.save_for_backward(softmax, target_mask, masked_target_1d)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        softmax, target_mask, masked_target_1d = ctx.saved_tensors
        grad_2d, arange_1d, softmax_update, grad_input = (
            VocabParallelCrossEntropy.prepare_gradient_calculation_operands(softmax, target_mask))
        grad_input = VocabParallelCrossEntropy.calculate_gradients(
            grad_2d, arange_1d, masked_target_1d, softmax_update, grad_input, grad_output)
        return grad_input, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                 tp_group) -> torch.Tensor:
    """Per-token loss [s, b] from vocab-sharded logits [s, b, V/tp] and targets [s, b]."""
    return _VocabParallelCrossEntropy.apply(logits, target, tp_group)
