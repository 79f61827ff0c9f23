"""Mid-training configs and LR-schedule rules, torch-free: the sweep schema and the planner
import them without the model stack (as `rl_probe.spec` is for the probe)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OptimizerChoice = Literal["auto", "torch-adamw", "megatron-distributed"]



def is_hf_dir(path: str | Path) -> bool:
    """An HF model directory: one that `from_pretrained` reads (its config.json is there)."""
    return (Path(path) / "config.json").is_file()


def hf_dir(path: str | Path) -> Path:
    """The HF directory of a checkpoint: a midtrain run's export (`<run>/hf`) or `path` itself."""
    path = Path(path)
    return path / "hf" if is_hf_dir(path / "hf") else path


def interval_steps(tokens: int | None, tokens_per_step: int) -> int | None:
    """Steps between the saves or exports declared every `tokens` (None: none declared)."""
    return max(1, round(tokens / tokens_per_step)) if tokens else None


Schedule = Literal["constant", "cosine", "wsd", "linear-decay"]
# A stable stage that decay branches fork from, and the branches: stable-then-decay as the
# field runs it (MiniCPM's WSD, OctoThinker): the stable stage holds its LR, each branch
# continues at that LR (no second warmup) and decays it to min_lr.
PHASE_SCHEDULES: dict[str, tuple[Schedule, ...]] = {
    "stable": ("constant",),
    "decay": ("linear-decay", "cosine"),
}
PHASE_RULES = {
    "stable": "a stable stage that decay branches fork from holds its LR",
    "decay": "a decay branch continues at its stable stage's LR and decays to min_lr",
}
Phase = Literal["pretrain", "full", "stable", "decay"]


def phase_schedule(phase: Phase, chosen: Schedule | None, default: Schedule) -> Schedule:
    """The LR schedule a stage of `phase` runs: the stage's own choice, else `default` where
    training runs start to end (pretraining, a recipe without decay branch), else the
    phase's shape. A choice the phase cannot run raises ValueError in one line."""
    allowed = PHASE_SCHEDULES.get(phase)
    if allowed is None:
        return chosen or default
    if chosen is None:
        return allowed[0]
    if chosen not in allowed:
        raise ValueError(f"{PHASE_RULES[phase]}: schedule {' or '.join(allowed)}, not {chosen!r}")
    return chosen


def phase_warmup(phase: Phase, warmup_tokens: int) -> int:
    """Warmup only where training starts (fresh optimizer state); a decay branch continues
    its stable stage's optimizer at full LR."""
    return 0 if phase == "decay" else warmup_tokens


def check_parallel_layout(world: int, tensor_model_parallel_size: int,
                          pipeline_model_parallel_size: int) -> int:
    """The data-parallel size world / (tp·pp); a ValueError naming the sizes if the
    world does not split into whole tensor×pipeline model replicas."""
    model_parallel = tensor_model_parallel_size * pipeline_model_parallel_size
    if type(world) is not int or world <= 0 or world % model_parallel:
        raise ValueError(
            f"{world!r} processes do not split into tensor_model_parallel_size "
            f"{tensor_model_parallel_size} x pipeline_model_parallel_size "
            f"{pipeline_model_parallel_size} = {model_parallel}; launch a positive multiple of "
            f"{model_parallel} processes")
    return world // model_parallel


class TrainSettings(BaseModel):
    """What every stage of a sweep shares (the sweep's `midtrain` section, less the launch)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq_length: int = Field(256, gt=0)
    micro_batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    schedule: Schedule = Field("wsd", description=(
        "the schedule of stages that train start to end; stable stages and decay branches "
        "take theirs from their phase (PHASE_SCHEDULES)"))
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of steps decaying")
    warmup_tokens: int = Field(0, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = Field(1.0, ge=0, description="max global grad norm; 0 disables clipping")
    # Saves after the first cost ~0.15 s at toy scale (the first ~4 s: dist_checkpointing
    # starts a helper process); raise this for large global batches.
    checkpoint_every_tokens: int | None = Field(
        262_144, gt=0, description="training states (weights and optimizer: the resume points) "
        "every this many tokens; None: only the final one")
    keep_states: int = Field(2, gt=0, description=(
        "training states a run keeps: the newest ones, each older one deleted once a newer one "
        "is complete. A finished stage keeps only its final state, and only where decay "
        "branches fork from it"))
    export_every_tokens: int | None = Field(None, gt=0, description=(
        "HF exports to hf_checkpoints/<tokens>/ every this many tokens, beside the stage's "
        "end (hf/, always written); None: the end only"))
    eval_every_steps: int = Field(50, gt=0)
    eval_tokens: int = Field(16384, gt=0, description="validation tokens per blend part")
    valid_percent: float = Field(2.0, gt=0, lt=50, description="documents held out per prefix")
    seed: int = 1234
    tensor_model_parallel_size: int = Field(
        1, gt=0, description="megatron tensor parallelism; launch a multiple of it in ranks")
    pipeline_model_parallel_size: int = Field(
        1, gt=0, description="megatron pipeline parallelism; not implemented, must be 1")
    bf16: bool = Field(False, description="bf16 mixed precision; GPU only (see `optimizer`)")
    optimizer: OptimizerChoice = Field(
        "auto", description="torch-adamw (fp32 weights, full AdamW state on every rank), "
        "megatron-distributed (megatron-core DDP + DistributedOptimizer), or auto: "
        "megatron-distributed with CUDA, torch-adamw without")
    recompute_activations: bool = Field(
        False, description="megatron full activation recomputation: each layer keeps only "
        "its input for backward")
    gpu_memory_gb: float | None = Field(
        None, gt=0, description="GiB per GPU (80 for an H100 80GB); validate/plan/run refuse "
        "settings whose estimate (midtrain.memory) exceeds it. Does not change results")

    @field_validator("pipeline_model_parallel_size")
    @classmethod
    def _refuse_pipeline_parallelism(cls, pp: int) -> int:
        if pp != 1:
            raise ValueError(f"pipeline parallelism is not implemented: set midtrain."
                             f"pipeline_model_parallel_size to 1 (got {pp}) and scale with "
                             "tensor_model_parallel_size or data-parallel ranks")
        return pp

    @model_validator(mode="after")
    def _check(self) -> "TrainSettings":
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} exceeds lr {self.lr}")
        return self


class TrainConfig(TrainSettings):
    """One mid-training stage. Token counts are converted to whole optimizer steps."""

    tokens: int = Field(gt=0, description="training token budget")
    threads: int = Field(1, gt=0, description="torch threads per process: a runtime choice, "
                                              "set per stage (StageMix.threads) or by the executor")


class MidtrainSettings(TrainSettings):
    """The sweep's `midtrain` section: TrainConfig's shared fields and the launch."""

    nproc_per_node: int = Field(1, description=(
        "training processes a midtrain stage run starts on its node (1: the stage worker "
        "itself; more: torchrun); a multiple of tensor x pipeline parallel size, the rest "
        "data-parallel replicas that multiply the global batch"))

    seeds: list[int] | None = Field(None, min_length=1, description=(
        "mid-training replicas: each recipe is mid-trained once per seed (its data order and "
        "initialisation), each replica probed and resampled by the ranking. None: one run at "
        "`seed`. The replica at TrainConfig's default seed is the run without `seeds`"))

    @field_validator("nproc_per_node")
    @classmethod
    def _whole_replicas(cls, nproc: int, info) -> int:
        tp = info.data.get("tensor_model_parallel_size", 1)
        pp = info.data.get("pipeline_model_parallel_size", 1)
        check_parallel_layout(nproc, tp, pp)
        return nproc

    @model_validator(mode="after")
    def _one_seed_setting(self) -> "MidtrainSettings":
        if self.seeds is not None:
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"seeds repeat ({self.seeds}); each replica needs its own seed")
            if "seed" in self.model_fields_set:
                raise ValueError("give either seed (one run) or seeds (replicas)")
        return self

    def replicas(self) -> dict[int | None, "MidtrainSettings"]:
        """The settings of each mid-training replica (None: the sweep has no `seeds`). Keys hash
        the resolved seed, so the replica at the default seed is the run without `seeds`."""
        if self.seeds is None:
            return {None: self}
        return {seed: self.model_copy(update={"seed": seed}) for seed in self.seeds}

    def train_config(self, **stage) -> TrainConfig:
        """This stage's TrainConfig: the shared settings and the stage's own fields."""
        return TrainConfig(**{**self.model_dump(exclude={"nproc_per_node", "seeds"}), **stage})

