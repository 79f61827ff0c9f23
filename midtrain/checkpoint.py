"""megatron-core dist_checkpointing of model + optimizer + training position + RNG.

A checkpoint is `<state_dir>/step_<NNNNNNNN>/`: a dist_checkpointing directory
plus `model_spec.json`. It is written as `.step_<N>.partial/` and renamed when
complete, so `latest_checkpoint` never returns a half-written one; it is deleted
by renaming it to `.step_<N>.deleted/` first, so it never returns a half-deleted one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.optimizer import (
    get_param_id_to_sharded_param_map,
    optim_state_to_sharding_state,
)
from megatron.core.optimizer import ChainedOptimizer, MegatronOptimizer

from midtrain import cpu_compat
from midtrain.spec import ModelSpec

_STEP_DIR = re.compile(r"^step_(\d{8})$")
SPEC_FILE = "model_spec.json"


def latest_checkpoint(state_dir: Path) -> Path | None:
    steps = sorted(p for p in Path(state_dir).glob("step_*") if _STEP_DIR.match(p.name))
    return steps[-1] if steps else None


def prune_checkpoints(state_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (0: all), oldest first, and what
    an interrupted prune left. The newest go last: a kill part-way leaves the resume point."""
    state_dir = Path(state_dir)
    for debris in state_dir.glob(".step_*.deleted"):
        shutil.rmtree(debris)
    steps = sorted(p for p in state_dir.glob("step_*") if _STEP_DIR.match(p.name))
    for old in steps[:max(0, len(steps) - keep)]:
        doomed = state_dir / f".{old.name}.deleted"
        os.replace(old, doomed)
        shutil.rmtree(doomed)


def resolve_checkpoint(path: Path) -> Path:
    """`path` itself if it is a checkpoint, else the latest one under `path/state`
    (a midtrain out_dir or a converted HF model)."""
    path = Path(path)
    if (path / SPEC_FILE).exists():
        return path
    latest = latest_checkpoint(path / "state") if (path / "state").is_dir() else None
    if latest is None:
        raise FileNotFoundError(f"{path}: not a midtrain checkpoint and no complete "
                                f"checkpoint under {path / 'state'}")
    return latest


def read_spec(ckpt_dir: Path) -> ModelSpec:
    return ModelSpec.model_validate_json((Path(ckpt_dir) / SPEC_FILE).read_text())


def _optimizer_params(optimizer: torch.optim.Optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def _optimizer_sharded_state_dict(optimizer: torch.optim.Optimizer, model_sharded: dict) -> dict:
    """AdamW's moments as ShardedTensors keyed like the model's parameters.

    The shared step counter is not a per-parameter tensor, so it travels as a
    plain value (megatron's own FP32Optimizer does the same).
    """
    state = optimizer.state_dict()
    steps = {float(s["step"]) for s in state["state"].values()}
    if len(steps) > 1:
        raise ValueError(f"optimizer step differs across parameters: {sorted(steps)}")
    id_map = get_param_id_to_sharded_param_map(model_sharded, _optimizer_params(optimizer))
    optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
    state["step"] = steps.pop() if steps else 0.0
    return state


# Each rank saves and loads its own shards; the checkpoint reshards over data-parallel
# ranks (megatron's layout without cross-rank gathers).
_DISTRIBUTED_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


def optimizer_kind(optimizer) -> str:
    return "megatron-distributed" if isinstance(optimizer, MegatronOptimizer) else "torch-adamw"


def _inner_optimizers(optimizer: MegatronOptimizer) -> list[MegatronOptimizer]:
    return (optimizer.chained_optimizers if isinstance(optimizer, ChainedOptimizer)
            else [optimizer])


def _megatron_sharded_state_dict(optimizer: MegatronOptimizer, model_sharded: dict,
                                 is_loading: bool) -> dict:
    if is_loading:  # torch's AdamW inside has no state (nor step) before its first step
        for inner in _inner_optimizers(optimizer):
            _materialise_adam_state(inner.optimizer)
    with cpu_compat.cuda_tensors_on_cpu():
        return optimizer.sharded_state_dict(model_sharded, is_loading=is_loading,
                                            metadata=_DISTRIBUTED_METADATA)


def _materialise_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter zero moments so a load has tensors to fill."""
    for p in _optimizer_params(optimizer):
        if not optimizer.state[p]:
            optimizer.state[p] = {"step": torch.tensor(0.0),
                                  "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}


def save_checkpoint(state_dir: Path, step: int, model: torch.nn.Module, spec: ModelSpec,
                    optimizer: torch.optim.Optimizer | None, train_state: dict) -> Path:
    """Collective over all ranks; returns the published checkpoint directory."""
    state_dir = Path(state_dir)
    final = state_dir / f"step_{step:08d}"
    staging = state_dir / f".step_{step:08d}.partial"
    rank0 = torch.distributed.get_rank() == 0
    if rank0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    torch.distributed.barrier()
    model_sharded = model.sharded_state_dict()
    sharded = {
        "model": model_sharded,
        "train_state": dict(train_state),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "python": random.getstate()},
    }
    if isinstance(optimizer, MegatronOptimizer):
        sharded["optimizer"] = _megatron_sharded_state_dict(optimizer, model_sharded, False)
    elif optimizer is not None:
        sharded["optimizer"] = _optimizer_sharded_state_dict(optimizer, model_sharded)
    if optimizer is not None:
        sharded["optimizer_kind"] = optimizer_kind(optimizer)
    dist_checkpointing.save(sharded, str(staging))
    if rank0:
        (staging / SPEC_FILE).write_text(spec.model_dump_json(indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    torch.distributed.barrier()
    return final


def has_optimizer_state(ckpt_dir: Path) -> bool:
    return "optimizer" in dist_checkpointing.load_common_state_dict(str(ckpt_dir))


def saved_optimizer_kind(ckpt_dir: Path) -> str | None:
    """Which optimizer wrote the checkpoint's optimizer state (None: weights only);
    checkpoints from before the choice existed hold torch AdamW state."""
    common = dist_checkpointing.load_common_state_dict(str(ckpt_dir))
    return common.get("optimizer_kind", "torch-adamw") if "optimizer" in common else None


def load_checkpoint(ckpt_dir: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None) -> dict:
    """Fill `model` (and `optimizer`, when given) in place; return the saved common state
    (`train_state`, `rng`)."""
    model_sharded = model.sharded_state_dict()
    sharded = {"model": model_sharded}
    if optimizer is not None and saved_optimizer_kind(ckpt_dir) != optimizer_kind(optimizer):
        raise ValueError(f"{ckpt_dir} holds {saved_optimizer_kind(ckpt_dir)} optimizer state; "
                         f"this run uses midtrain.optimizer {optimizer_kind(optimizer)}")
    if isinstance(optimizer, MegatronOptimizer):
        sharded["optimizer"] = _megatron_sharded_state_dict(optimizer, model_sharded, True)
    elif optimizer is not None:
        _materialise_adam_state(optimizer)
        sharded["optimizer"] = _optimizer_sharded_state_dict(optimizer, model_sharded)
    loaded = dist_checkpointing.load(sharded, str(ckpt_dir))
    model.load_state_dict(loaded["model"])
    if isinstance(optimizer, MegatronOptimizer):
        with torch.no_grad(), cpu_compat.cuda_tensors_on_cpu():
            optimizer.load_state_dict(loaded["optimizer"])
        # With torch's AdamW inside (no TE/Apex), megatron keeps the step count in the
        # param groups, but the per-parameter `step` tensors it restores are the loading
        # template's (0), and all one shared tensor, which AdamW would then advance once
        # per parameter. Each parameter gets its own copy of the saved count.
        for inner in _inner_optimizers(optimizer):
            if not isinstance(inner.optimizer, torch.optim.AdamW):
                continue  # TE's and Apex's fused Adam keep the step in the groups only
            (step,) = {group["step"] for group in inner.optimizer.param_groups}
            for state in inner.optimizer.state.values():
                state["step"] = torch.tensor(float(step))
    elif optimizer is not None:
        opt = loaded["optimizer"]
        step = torch.tensor(float(opt["step"]))
        optimizer.load_state_dict({
            "state": {i: {**s, "step": step.clone()} for i, s in opt["state"].items()},
            "param_groups": opt["param_groups"],
        })
    return {k: loaded[k] for k in ("train_state", "rng") if k in loaded}


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
