"""Disk a sweep's stage runs take, estimated from the plan before anything runs: what
`midprobe plan` prints and the sweep's `disk_budget_gb` bounds.

Mid-training stages: their training states and HF exports (`midtrain.memory.stage_disk`).
Curation: each corpus's token shards, at least the tokens the largest stage reads from it
(a corpus larger than that takes more) at datatrove's token width (4 bytes past a 65,536-token
vocabulary, else 2). Probes, reports and the curated JSONL text are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from midtrain.memory import GIB, StageDisk, stage_disk
from pipelines.plan import Plan, build_plan
from pipelines.store import StageRun
from pipelines.sweep import planned_model


@dataclass(frozen=True)
class DiskEstimate:
    midtrain: dict[StageRun, StageDisk]
    shards: dict[StageRun, int]  # curate run -> bytes
    at_once: int  # stage runs the executor runs at once

    @property
    def states(self) -> int:
        return sum(disk.states_kept * disk.state for disk in self.midtrain.values())

    @property
    def exports(self) -> int:
        return sum(disk.exports * disk.export for disk in self.midtrain.values())

    @property
    def running(self) -> int:
        """The states stage runs hold while they run, beyond what they keep, `at_once` of the largest."""
        extra = sorted((disk.peak - disk.kept for disk in self.midtrain.values()), reverse=True)
        return sum(extra[:self.at_once])

    @property
    def total(self) -> int:
        return self.states + self.exports + sum(self.shards.values()) + self.running

    def of(self, run: StageRun) -> str:
        """A run's line in the plan table."""
        if run in self.midtrain:
            disk = self.midtrain[run]
            return f"{_gib(disk.kept)} (up to {_gib(disk.peak)})"
        return _gib(self.shards[run]) if run in self.shards else ""

    def describe(self) -> str:
        return (f"{_gib(self.total)} (training states kept {_gib(self.states)}, HF exports "
                f"{_gib(self.exports)}, dataset shards {_gib(sum(self.shards.values()))}, states of "
                f"{self.at_once} stage run(s) running at once {_gib(self.running)})")


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"


def estimate_disk(plan: Plan, model, nproc: int, at_once: int, cuda: bool = True) -> DiskEstimate | None:
    """The plan's disk, for `model` (the planned ModelSpec; None: not known, no estimate), on GPUs
    (where `optimizer: auto` is megatron's distributed optimizer) or, `cuda=False`, on CPUs."""
    if model is None:
        return None
    stages = [run for run in plan.runs() if run.stage == "midtrain"]
    midtrain = {run: stage_disk(model, run.config.train, nproc, keep_final_state=run.config.phase == "stable",
                                cuda=cuda) for run in stages}
    token_bytes = 4 if model.vocab_size > 65536 else 2
    shards = {}
    for run in plan.runs():
        if run.stage != "curate":
            continue
        read = [stage.config.mix[run.config.corpus] * stage.config.train.tokens
                for stage in stages if stage.inputs.get(f"corpus:{run.config.corpus}") == run]
        shards[run] = round(max(read, default=0) * token_bytes)
    return DiskEstimate(midtrain, shards, min(at_once, max(1, len(stages))))


def sweep_disk(sweep, source: Path, plan: Plan | None = None, parallel: int | None = None,
               cuda: bool = True) -> DiskEstimate | None:
    """The disk estimate of a validated sweep (its plan built here unless given) with `parallel`
    stage runs at once (None: its executor's), on GPUs as `plan` prints it (or on CPUs)."""
    return estimate_disk(plan or build_plan(sweep, source), planned_model(sweep, source),
                         sweep.midtrain.nproc_per_node, parallel or sweep.executor.parallel, cuda)


def disk_errors(sweep, source: Path, plan: Plan | None = None, parallel: int | None = None) -> list[str]:
    """A sweep whose estimate exceeds its declared `disk_budget_gb`, in one line."""
    if sweep.disk_budget_gb is None:
        return []
    estimate = sweep_disk(sweep, source, plan, parallel)
    if estimate is None or estimate.total <= sweep.disk_budget_gb * GIB:
        return []
    return [f"disk_budget_gb: the sweep needs an estimated {estimate.describe()}, more than the "
            f"declared {sweep.disk_budget_gb:g} GiB; lower midtrain.keep_states or executor.parallel, "
            "drop export_every_tokens, or point the workspace at a larger disk"]
