"""Bytes per GPU of a mid-training stage, estimated from its shape and settings
(torch-free: `midprobe plan` runs it on machines without torch's GPU build).

Where the bytes go, per rank of tp x dp (N = parameters on the rank, its tensor-
parallel shard; dp = data-parallel size):

- torch-adamw: fp32 weights (4N), fp32 `.grad` (4N), AdamW moments (8N) on every
  rank; after backward, the flat all-reduce copy of the gradients (dp > 1) and then
  the foreach step's temporaries (4N each, one at a time); bf16 autocast keeps a
  bf16 copy of the weights beside the activations (2N).
- megatron-distributed: model weights (2N bf16 or 4N fp32), DDP's fp32 main-grad
  buffer (4N), and this rank's 1/dp shard of the fp32 main weights (4N/dp, bf16
  only: in fp32 they are views of the weights) and AdamW moments (8N/dp), plus the
  step's temporaries on the shard (4N/dp). 6 + 12/dp bytes per parameter in bf16.
- activations of one micro batch (T = micro_batch_size x seq_length tokens), counted
  from the tensors megatron's local layer spec with `midtrain.kernels` saves for
  backward (`tests/test_midtrain_memory.py` counts them): per layer 6h unsharded
  (the two norms' inputs, internals and outputs) and (3h + 2kv + 4f)/tp sharded
  (q, attention output, its projection input, k, v, fc1's output, SwiGLU's gate
  and output); the final norm 3h; the loss keeps fp32 softmax over the vocabulary
  shard (4V/tp), and bf16 logits (2V/tp) are alive beside it; backward through the
  last layer adds its gradients in flight (h + 2f/tp). With
  `recompute_activations` each layer keeps only its input (h), and one layer's
  activations exist at a time in backward. Attention is flash-style (SDPA, TE):
  nothing quadratic in the sequence length is kept.
- on a GPU, `GPU_RUNTIME_RESERVE` for the CUDA context, NCCL buffers and the caching
  allocator's fragmentation: an assumption, not a measurement of this project.

No sequence parallelism, pipeline parallelism or CPU offload: midtrain uses none.

Bytes on disk of a stage run (`stage_disk`, N = the whole model's parameters): a training
state holds the weights in the model's dtype and the optimizer state: torch AdamW's two fp32
moments (12N in all), or the distributed optimizer's fp32 main weights and moments (14N in
bf16, 16N in fp32; `tests/test_midtrain_memory.py` weighs saved ones). An HF export holds the
weights in the training dtype (2N or 4N).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from midtrain.config import interval_steps
from midtrain.spec import ModelSpec

if TYPE_CHECKING:
    from midtrain.config import OptimizerChoice, TrainConfig

GIB = 1024 ** 3
GPU_RUNTIME_RESERVE = 2 * GIB


def resolve_optimizer(choice: OptimizerChoice, cuda: bool) -> str:
    """`auto` is megatron's distributed optimizer on GPUs and torch's AdamW on CPU."""
    if choice != "auto":
        return choice
    return "megatron-distributed" if cuda else "torch-adamw"


def parameters_per_rank(spec: ModelSpec, tp: int) -> int:
    """Parameters one tensor-parallel rank holds: matrices and the vocabulary split
    over tp, norm gains replicated."""
    h, kv, f = spec.hidden_size, spec.num_kv_heads * spec.head_dim, spec.ffn_hidden_size
    sharded_per_layer = h * (h + 2 * kv) + h * h + 3 * h * f
    embeddings = spec.vocab_size * h * (1 if spec.tie_embeddings else 2)
    norms = spec.num_layers * 2 * h + h
    return (spec.num_layers * sharded_per_layer + embeddings) // tp + norms


class MemoryEstimate(BaseModel):
    """Peak bytes per rank, by what holds them."""

    model_config = ConfigDict(frozen=True)

    optimizer: str
    tensor_model_parallel_size: int
    data_parallel_size: int
    parameters_per_rank: int
    weights: int
    grads: int
    optimizer_state: int
    activations: int
    step_temporaries: int
    runtime_reserve: int

    @property
    def total(self) -> int:
        # activations are freed before the optimizer step allocates its temporaries
        return (self.weights + self.grads + self.optimizer_state + self.runtime_reserve
                + max(self.activations, self.step_temporaries))

    def describe(self) -> str:
        parts = [("weights", self.weights), ("grads", self.grads),
                 ("optimizer", self.optimizer_state), ("activations", self.activations)]
        if self.runtime_reserve:
            parts.append(("CUDA reserve", self.runtime_reserve))
        return (f"{self.total / GIB:.1f} GiB/GPU (" + ", ".join(
            f"{name} {size / GIB:.1f}" for name, size in parts)
            + f"; {self.optimizer}, tp {self.tensor_model_parallel_size} "
              f"x dp {self.data_parallel_size})")


def _activation_bytes(spec: ModelSpec, cfg: TrainConfig, tp: int, act_bytes: int) -> int:
    h, kv, f, V = (spec.hidden_size, spec.num_kv_heads * spec.head_dim, spec.ffn_hidden_size,
                   spec.vocab_size)
    tokens = cfg.micro_batch_size * cfg.seq_length
    layer = 6 * h + (3 * h + 2 * kv + 4 * f) / tp
    layers = (spec.num_layers * h + layer if cfg.recompute_activations
              else spec.num_layers * layer)
    backward = h + 2 * f / tp  # gradients in flight through the last layer's MLP
    loss = 4 * V / tp + (2 * V / tp if act_bytes == 2 else 0)
    return round(tokens * ((layers + 3 * h + backward) * act_bytes + loss))


def estimate_memory(spec: ModelSpec, cfg: TrainConfig, nproc: int = 1,
                    cuda: bool = True) -> MemoryEstimate:
    """Peak bytes per rank of training `spec` with `cfg` on `nproc` ranks (tp x dp)."""
    tp = cfg.tensor_model_parallel_size
    dp = max(1, nproc // tp)
    optimizer = resolve_optimizer(cfg.optimizer, cuda)
    n = parameters_per_rank(spec, tp)
    activations = _activation_bytes(spec, cfg, tp, 2 if cfg.bf16 else 4)
    if optimizer == "torch-adamw":
        weights, grads, optimizer_state = 4 * n, 4 * n, 8 * n
        # the flat all-reduce copy, then (after it is freed) the foreach step's temporaries
        step_temporaries = 4 * n
        if cfg.bf16:  # autocast keeps bf16 copies of the weights through backward
            activations += 2 * n
    else:
        weights = (2 if cfg.bf16 else 4) * n
        grads = 4 * n
        optimizer_state = ((4 if cfg.bf16 else 0) + 8) * n // dp
        step_temporaries = 4 * n // dp
    return MemoryEstimate(
        optimizer=optimizer, tensor_model_parallel_size=tp, data_parallel_size=dp,
        parameters_per_rank=n, weights=weights, grads=grads, optimizer_state=optimizer_state,
        activations=activations,
        step_temporaries=step_temporaries, runtime_reserve=GPU_RUNTIME_RESERVE if cuda else 0)


class StageDisk(BaseModel):
    """Bytes on disk of a midtrain stage run: its training states and HF exports."""

    model_config = ConfigDict(frozen=True)

    state: int  # one training state
    export: int  # one HF export
    states_running: int  # at once while it runs: keep_states and the one being written
    states_kept: int  # once finished: the final one where decay branches continue it
    exports: int

    @property
    def peak(self) -> int:
        return self.states_running * self.state + self.exports * self.export

    @property
    def kept(self) -> int:
        return self.states_kept * self.state + self.exports * self.export


def training_state_bytes(spec: ModelSpec, cfg: TrainConfig, cuda: bool = True) -> int:
    """One saved training state, every rank's shards together."""
    n = parameters_per_rank(spec, 1)
    if resolve_optimizer(cfg.optimizer, cuda) == "torch-adamw":
        return 4 * n + 8 * n  # fp32 weights (bf16 only as autocast), two moments
    return (2 if cfg.bf16 else 4) * n + 12 * n  # weights, fp32 main weights and two moments


def stage_disk(spec: ModelSpec, cfg: TrainConfig, nproc: int, keep_final_state: bool,
               cuda: bool = True) -> StageDisk:
    """What a stage run of `cfg.tokens` on `nproc` ranks keeps on disk (midtrain.train's retention)."""
    data_parallel = max(1, nproc // cfg.tensor_model_parallel_size)
    tokens_per_step = cfg.micro_batch_size * cfg.grad_accum * data_parallel * cfg.seq_length
    steps = math.ceil(cfg.tokens / tokens_per_step)
    saves = math.ceil(steps / (interval_steps(cfg.checkpoint_every_tokens, tokens_per_step) or steps))
    export_every = interval_steps(cfg.export_every_tokens, tokens_per_step)
    return StageDisk(
        state=training_state_bytes(spec, cfg, cuda),
        export=(2 if cfg.bf16 else 4) * parameters_per_rank(spec, 1),
        states_running=min(saves, cfg.keep_states + 1), states_kept=int(keep_final_state),
        exports=1 + ((steps - 1) // export_every if export_every else 0))
