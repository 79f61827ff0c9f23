"""The only place that adapts megatron-core 0.16.1 to a machine without CUDA.

megatron-core places tensors with `torch.cuda.current_device()`, forks a CUDA
RNG tracker inside attention, saves the CUDA RNG state around recomputed layers, and
dist_checkpointing calls
`torch.cuda.synchronize()`. On a CPU-only torch these raise. `apply()` fixes
exactly those calls and is a no-op when CUDA is available, so the GPU path runs
unmodified megatron-core. midprobe never builds the default causal mask
(`transformer.utils.get_default_causal_mask`, also CUDA-only) because its
attention module is causal by construction (see `midtrain.model`).

megatron's optimizers (`get_megatron_optimizer`: DistributedOptimizer, FP32Optimizer)
and its gradient clipping allocate scalars on 'cuda' and check parameters by their
CUDA type strings. `cuda_tensors_on_cpu()` is the scope in which midprobe calls them
without CUDA: it keeps those tensors on the CPU and reports CPU tensors by the CUDA
type names megatron expects. It is a context, not a global patch, because a
TorchFunctionMode sees every torch call made inside it.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_applied = False


def on_cpu() -> bool:
    return not torch.cuda.is_available()


def apply() -> None:
    """Install the CPU shims once per process; does nothing when CUDA is present."""
    global _applied
    if _applied or not on_cpu():
        return
    from megatron.core.tensor_parallel.random import initialize_rng_tracker

    # megatron allocates parameters, RoPE frequencies and DDP buffers on
    # torch.cuda.current_device(); every such call site passes it as a `device`.
    torch.cuda.current_device = lambda: torch.device("cpu")
    # dist_checkpointing's filesystem writer synchronizes before writing.
    torch.cuda.synchronize = lambda device=None: None
    # Attention and weight init fork the model-parallel CUDA RNG; the inference
    # tracker's fork is a no-op, so they draw from torch's CPU generator, which
    # the caller seeds. (Public API; no CUDA generator is touched.)
    initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    # Activation recomputation saves and restores the CUDA generator with the CPU one
    # around each recomputed layer; without CUDA there is only the CPU one.
    from megatron.core.tensor_parallel import random as megatron_random

    megatron_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    megatron_random._set_cuda_rng_state = lambda state, *args, **kwargs: None
    _applied = True


_CUDA_TYPE_NAMES = {torch.float32: "torch.cuda.FloatTensor", torch.float16: "torch.cuda.HalfTensor",
                    torch.bfloat16: "torch.cuda.BFloat16Tensor"}


def _is_cuda_device(device) -> bool:
    return (isinstance(device, str) and device.startswith("cuda")) or (
        isinstance(device, torch.device) and device.type == "cuda")


class _CudaOnCpu(TorchFunctionMode):
    """`device='cuda'` allocations land on the CPU, `.cuda()` is the identity, and
    `Tensor.type()` names a CPU float tensor as its CUDA type (megatron's checks)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return _CUDA_TYPE_NAMES.get(args[0].dtype) or func(*args)
        return func(*args, **kwargs)


def cuda_tensors_on_cpu() -> contextlib.AbstractContextManager:
    """The scope for megatron's optimizer calls: `_CudaOnCpu` without CUDA, nothing with it."""
    return _CudaOnCpu() if on_cpu() else contextlib.nullcontext()
