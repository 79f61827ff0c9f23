"""Everything a report needs, read from the run store (never from wandb).

Each number carries the stage run it came from (``stage/key``), so a reader
can trace any figure in a report back to a directory in the workspace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.failures import classify
from pipelines.ranking import ProbeRun, load_eval_correctness
from pipelines.store import RunStore


@dataclass
class StageInfo:
    stage: str
    key: str
    role: dict
    path: Path
    manifest: dict
    metrics: dict[str, list[tuple[int, float]]]

    @property
    def ref(self) -> str:
        return f"{self.stage}/{self.key}"

    def read_json(self, name: str) -> dict:
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class SweepResults:
    sweep: str
    probes: list[ProbeRun]
    probe_info: dict[str, StageInfo]  # probe key -> info
    curation: dict[str, StageInfo]  # corpus -> info
    midtrain: list[StageInfo]
    base: StageInfo | None
    difficulty: StageInfo | None = None
    missing: list[str] = field(default_factory=list)
    controls: list[ProbeRun] = field(default_factory=list)  # random-reward control probes, never ranked

    def midtrain_for(self, recipe: str) -> list[StageInfo]:
        """The recipe's mid-training stages in training order (stable, then decay): each stage's
        `init` input is the stage before it. The store returns them in no particular order."""
        stages = {m.ref: m for m in self.midtrain if recipe in m.role["recipes"]}

        def depth(info: StageInfo) -> int:
            parent = info.manifest.get("inputs", {}).get("init")
            return 1 + depth(stages[parent]) if parent in stages else 0

        return sorted(stages.values(), key=depth)

    def final_checkpoint_stage(self, recipe: str) -> StageInfo | None:
        """The stage run whose checkpoint the recipe's probes read: its last mid-training stage,
        or the base for a recipe without mid-training."""
        stages = self.midtrain_for(recipe)
        return stages[-1] if stages else self.base

    def validation_loss(self, recipes: list[str]) -> tuple[list[str], np.ndarray] | None:
        """(corpora, loss per recipe): each recipe's final validation loss averaged over the corpora
        every recipe's last stage validated on. A recipe's own decay corpora do not compare (a
        repetitive corpus has a low loss by construction); None without shared corpora."""
        finals = []
        for recipe in recipes:
            final = self.final_checkpoint_stage(recipe)
            if final is None:
                return None
            finals.append({n: v[-1][1] for n, v in final.metrics.items()
                           if n.startswith("val/") and n.endswith("/loss") and v})
        shared = sorted(set.intersection(*(set(f) for f in finals))) if finals else []
        if not shared:
            return None
        return [n.removeprefix("val/").removesuffix("/loss") for n in shared], \
            np.array([np.mean([f[n] for n in shared]) for f in finals])


def collect(store: RunStore, sweep: str) -> SweepResults:
    members = store.members(sweep)
    if not members:
        raise LookupError(f"no stage runs of sweep '{sweep}' in {store.workspace}")
    by_ref: dict[str, StageInfo] = {}
    missing = []
    for stage, key, role in members:
        ref = f"{stage}/{key}"
        if stage == "external":
            continue
        run_path = store.workspace / stage / key
        if not (run_path / "manifest.json").is_file():
            missing.append(ref)
            continue
        if ref not in by_ref:
            by_ref[ref] = StageInfo(stage, key, dict(role, recipes=[]), run_path,
                                    json.loads((run_path / "manifest.json").read_text()),
                                    store.metrics(stage, key))
        if "recipe" in role and role.get("kind") == "midtrain":
            by_ref[ref].role["recipes"].append(role["recipe"])

    probes, controls, probe_info = [], [], {}
    for info in by_ref.values():
        if info.role.get("kind") != "probe":
            continue
        steps, ids, correct = load_eval_correctness(info.path)
        summary = info.read_json("summary.json")
        run = ProbeRun(recipe=info.role["recipe"], seed=info.role["seed"], key=info.key,
                       spec_hash=info.manifest["config"]["spec_hash"], eval_steps=steps,
                       correct=correct, problem_ids=ids, metrics=info.metrics,
                       profile=info.read_json("profile.json") or summary.get("profile", {}),
                       cpu_seconds=info.manifest.get("cpu_seconds", 0.0),
                       replica=info.role.get("replica"))
        run.failure_modes = classify(info.metrics, run.accuracy)
        (controls if info.role.get("control") else probes).append(run)
        probe_info[info.key] = info
    probes.sort(key=lambda r: (r.recipe, r.seed))
    controls.sort(key=lambda r: (r.recipe, r.seed))

    curation = {i.role["corpus"]: i for i in by_ref.values() if i.role.get("kind") == "curate"}
    midtrain = [i for i in by_ref.values() if i.role.get("kind") == "midtrain"]
    base = next((i for i in by_ref.values() if i.role.get("kind") == "base"), None)
    difficulty = next((i for i in by_ref.values() if i.role.get("kind") == "difficulty"), None)
    return SweepResults(sweep, probes, probe_info, curation, midtrain, base, difficulty, missing, controls)


def recipe_cost_hours(results: SweepResults, recipe: str) -> float:
    """CPU-hours of a recipe: its mid-training stages (shared stages counted in full) plus its probes."""
    seconds = sum(m.manifest.get("cpu_seconds", 0.0) for m in results.midtrain_for(recipe))
    seconds += sum(p.cpu_seconds for p in results.probes if p.recipe == recipe)
    return seconds / 3600
