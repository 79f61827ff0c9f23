"""megatron-core dist_checkpointing of model + optimizer + training position + RNG.

A checkpoint is `<state_dir>/step_<NNNNNNNN>/`: a dist_checkpointing directory
plus `model_spec.json`. It is written as `.step_<N>.partial/` and renamed when
complete, so `latest_checkpoint` never returns a half-written one.
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

from midtrain.spec import ModelSpec

_STEP_DIR = re.compile(r"^step_(\d{8})$")
SPEC_FILE = "model_spec.json"


def latest_checkpoint(state_dir: Path) -> Path | None:
    steps = sorted(p for p in Path(state_dir).glob("step_*") if _STEP_DIR.match(p.name))
    return steps[-1] if steps else None


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
    if optimizer is not None:
        sharded["optimizer"] = _optimizer_sharded_state_dict(optimizer, model_sharded)
    dist_checkpointing.save(sharded, str(staging))
    if rank0:
        (staging / SPEC_FILE).write_text(spec.model_dump_json(indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    torch.distributed.barrier()
    return final


def has_optimizer_state(ckpt_dir: Path) -> bool:
    return "optimizer" in dist_checkpointing.load_common_state_dict(str(ckpt_dir))


def load_checkpoint(ckpt_dir: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None) -> dict:
    """Fill `model` (and `optimizer`, when given) in place; return the saved common state
    (`train_state`, `rng`)."""
    model_sharded = model.sharded_state_dict()
    sharded = {"model": model_sharded}
    if optimizer is not None:
        _materialise_adam_state(optimizer)
        sharded["optimizer"] = _optimizer_sharded_state_dict(optimizer, model_sharded)
    loaded = dist_checkpointing.load(sharded, str(ckpt_dir))
    model.load_state_dict(loaded["model"])
    if optimizer is not None:
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
