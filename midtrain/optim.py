"""The weight update of mid-training: the optimizer, gradient accumulation over micro batches, the
data-parallel gradient reduction, clipping and the step.

Two implementations with one interface (`accumulate(micro_batches) -> loss`, `step(lr) -> grad
norm`, `weights_loaded()`), chosen by `TrainConfig.optimizer` (`midtrain.memory.resolve_optimizer`):
`TorchAdamW` (fp32, every rank holds the full optimizer state; the CPU path, bitwise reproducible)
and `MegatronDistributed` (megatron-core's DistributedDataParallel + DistributedOptimizer).
"""

from __future__ import annotations

import contextlib
import math

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
from megatron.core.transformer.module import Float16Module, param_is_not_shared

from midtrain import cpu_compat
from midtrain.config import TrainConfig
from midtrain.model import micro_loss


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # Norm gains (1-D) are not decayed, matrices and embeddings are.
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_eps, foreach=True)


def _all_reduce_mean_grads(params: list[torch.nn.Parameter], group) -> None:
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat, group=group)
    flat.div_(group.size())
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def _backward(model, micro_batches: list, no_sync=contextlib.nullcontext) -> torch.Tensor:
    """Backward over the micro batches (the last one outside `no_sync`, where a
    gradient reduce may start); returns this rank's [loss sum, loss tokens]."""
    loss_tokens = sum(mask.sum() for _, _, mask in micro_batches).float()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loss_tokens.device)
    for i, (tokens, labels, loss_mask) in enumerate(micro_batches):
        with no_sync() if i < len(micro_batches) - 1 else contextlib.nullcontext():
            micro_sum, _ = micro_loss(model, tokens, labels, loss_mask)
            (micro_sum / loss_tokens).backward()
        loss_sum += micro_sum.detach().double()
    return torch.stack([loss_sum, loss_tokens.double()])


def _mean_loss(stats: torch.Tensor, dp_group) -> float:
    if dp_group.size() > 1:
        torch.distributed.all_reduce(stats, group=dp_group)
    return (stats[0] / stats[1]).item()


def accumulate_gradients(model, micro_batches: list, params: list, dp_group) -> float:
    """Backward over the micro batches into `.grad` (averaged over the data-parallel
    group); returns the mean loss per loss token over the global batch."""
    stats = _backward(model, micro_batches)
    if dp_group.size() > 1:
        _all_reduce_mean_grads(params, dp_group)
    return _mean_loss(stats, dp_group)


def clip_gradients(params: list, max_norm: float, tp_group) -> float:
    """Scale gradients to a global norm of at most `max_norm` (0: never); return the
    norm before clipping.

    The norm counts each parameter of the model once: every rank's shards, and the
    tensors every tensor-parallel rank holds a copy of (norm gains) on its rank 0
    only, chosen by megatron's own filters. megatron's `get_grad_norm_fp32`, which
    sums the same way, allocates on 'cuda', so torch's norm and clip functions do
    the arithmetic; over one rank this is exactly `torch.nn.utils.clip_grad_norm_`.
    """
    counted = [p.grad for p in params
               if param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p, tp_group)]
    squared = torch.nn.utils.get_total_norm(counted) ** 2
    torch.distributed.all_reduce(squared, group=tp_group)
    total = squared.sqrt()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm if max_norm > 0 else math.inf, total)
    return total.item()


class TorchAdamW:
    """torch's AdamW on the GPTModel's own fp32 parameters (bf16 only as autocast).
    Gradients are averaged over the data-parallel group by one flat all-reduce after
    backward, and every data-parallel rank holds the full optimizer state. The path
    the CPU tests run, bitwise reproducible."""

    name = "torch-adamw"

    def __init__(self, gpt, cfg: TrainConfig):
        self.gpt = self.module = gpt
        self.optimizer = make_optimizer(gpt, cfg)
        self.params = list(gpt.parameters())
        self.clip_grad = cfg.clip_grad
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.dp_group = parallel_state.get_data_parallel_group()

    def accumulate(self, micro_batches: list) -> float:
        return accumulate_gradients(self.gpt, micro_batches, self.params, self.dp_group)

    def step(self, lr: float) -> float:
        """Clip, update (skipped when the norm is not finite), clear; return the norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        grad_norm = clip_gradients(self.params, self.clip_grad, self.tp_group)
        if math.isfinite(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def weights_loaded(self) -> None:
        """The optimizer updates the model's parameters themselves: nothing to copy."""


class MegatronDistributed:
    """megatron-core's DistributedDataParallel and DistributedOptimizer.

    With `bf16` the model holds bf16 parameters (megatron's Float16Module) and the
    optimizer fp32 main weights; gradients accumulate in DDP's contiguous fp32
    main-grad buffers, are reduce-scattered over the data-parallel group in buckets
    as backward produces them (`overlap_grad_reduce`), and each data-parallel rank
    keeps the fp32 main weights and AdamW moments of its 1/dp shard only, then
    all-gathers the updated parameters. Without CUDA, megatron's optimizer calls run
    inside `cpu_compat.cuda_tensors_on_cpu()` (fp32 only).
    """

    name = "megatron-distributed"

    def __init__(self, gpt, cfg: TrainConfig):
        self.gpt = gpt
        model = Float16Module(gpt.config, gpt) if gpt.config.bf16 else gpt
        self.module = DistributedDataParallel(
            gpt.config, DistributedDataParallelConfig(
                grad_reduce_in_fp32=True, overlap_grad_reduce=True,
                use_distributed_optimizer=True), model)
        # clip_grad 0 (no clipping) as an infinite threshold, so the norm is still reported
        self.optimizer_config = OptimizerConfig(
            optimizer="adam", lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_eps=cfg.adam_eps,
            clip_grad=cfg.clip_grad or math.inf, bf16=gpt.config.bf16,
            use_distributed_optimizer=True)
        with cpu_compat.cuda_tensors_on_cpu():
            self.optimizer = get_megatron_optimizer(self.optimizer_config, [self.module])
        self.weight_decay = cfg.weight_decay
        self.dp_group = parallel_state.get_data_parallel_group()

    def accumulate(self, micro_batches: list) -> float:
        self.module.zero_grad_buffer()
        self.optimizer.zero_grad()
        stats = _backward(self.module, micro_batches, self.module.no_sync)
        self.module.finish_grad_sync()
        return _mean_loss(stats, self.dp_group)

    def step(self, lr: float) -> float:
        # What megatron's OptimizerParamScheduler sets: norm gains and biases carry wd_mult 0.
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
            group["weight_decay"] = self.weight_decay * group["wd_mult"]
        with cpu_compat.cuda_tensors_on_cpu():
            _, grad_norm, _ = self.optimizer.step()
        return float(grad_norm)

    def weights_loaded(self) -> None:
        """Weights written into the model after the optimizer was built (HF init, a
        checkpoint without optimizer state) become the fp32 main weights."""
        with cpu_compat.cuda_tensors_on_cpu():
            self.optimizer.reload_model_params()


def make_weight_update(gpt, cfg: TrainConfig, kind: str) -> TorchAdamW | MegatronDistributed:
    return MegatronDistributed(gpt, cfg) if kind == "megatron-distributed" else TorchAdamW(gpt, cfg)
