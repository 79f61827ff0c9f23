"""The only place that adapts megatron-core 0.16.1 to a machine without CUDA.

megatron-core places tensors with `torch.cuda.current_device()` and forks a CUDA
RNG tracker inside attention, and dist_checkpointing calls
`torch.cuda.synchronize()`. On a CPU-only torch these raise. `apply()` fixes
exactly those calls and is a no-op when CUDA is available, so the GPU path runs
unmodified megatron-core. midprobe never builds the default causal mask
(`transformer.utils.get_default_causal_mask`, also CUDA-only) because its
attention module is causal by construction (see `midtrain.model`), and it uses
torch's AdamW, so megatron's CUDA-only optimizer wrappers are not needed.
"""

from __future__ import annotations

import torch

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
    _applied = True
