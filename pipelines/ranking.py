"""Ranking recipes by RL-amenability, with bootstrap confidence over seeds and prompts.

The unit of evidence is a probe run: one checkpoint, one probe spec, one seed,
with held-out accuracy per eval problem at every eval step. A recipe's score
is the mean over its seeds of a per-run score: by default the area under
the held-out accuracy curve, i.e. how well the checkpoint does *under* RL, as
OctoThinker judged recipes. Gain-over-step-0 scores are available too, but
alone they reward a recipe for starting weak. The bootstrap resamples seeds within each
recipe and eval problems (the same resampled problems for every run, so
recipes stay paired), which is what makes "A beats B with probability p"
meaningful when the runs are few.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SCORES = {
    "auc_acc": "mean held-out accuracy over the probe's eval steps after step 0 (area under the curve)",
    "auc_gain": "mean held-out accuracy gain over step 0, averaged over the probe's eval steps",
    "final_gain": "held-out accuracy gain from step 0 to the last eval",
    "final_acc": "held-out accuracy at the last eval",
    "fitted_gain": "rise of the least-squares line through held-out accuracy over the probe's evals "
                   "(does RL move the checkpoint at all; less noisy than final_gain)",
}


@dataclass
class ProbeRun:
    recipe: str
    seed: int
    key: str
    spec_hash: str
    eval_steps: list[int]
    correct: np.ndarray  # [n_evals, n_problems] mean correctness per eval problem, columns in problem_ids order
    problem_ids: list[str]
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    profile: dict = field(default_factory=dict)
    cpu_seconds: float = 0.0
    failure_modes: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> np.ndarray:
        return self.correct.mean(axis=1)


def load_eval_correctness(run_dir: Path) -> tuple[list[int], list[str], np.ndarray]:
    """Per-problem correctness at every eval step, from the probe's eval rollouts."""
    per_step: dict[int, dict[str, list[float]]] = {}
    for path in sorted((run_dir / "rollouts").glob("step_*.jsonl")):
        step = int(path.stem.split("_")[1])
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("split", "eval") != "eval":
                continue
            per_step.setdefault(step, {}).setdefault(str(row["id"]), []).append(float(row["acc"]))
    if not per_step:
        raise ValueError(f"{run_dir}: no eval rollouts")
    steps = sorted(per_step)
    ids = sorted(set.intersection(*(set(v) for v in per_step.values())))
    matrix = np.array([[np.mean(per_step[s][i]) for i in ids] for s in steps])
    return steps, ids, matrix


def run_scores(correct: np.ndarray, score: str) -> np.ndarray:
    """Per-run scores from [..., n_evals, n_problems] correctness (vectorised over leading axes)."""
    acc = correct.mean(axis=-1)
    gain = acc - acc[..., :1]
    if score == "auc_acc":
        return acc[..., 1:].mean(axis=-1) if acc.shape[-1] > 1 else acc[..., 0]
    if score == "auc_gain":
        return gain[..., 1:].mean(axis=-1) if acc.shape[-1] > 1 else gain[..., 0]
    if score == "final_gain":
        return gain[..., -1]
    if score == "final_acc":
        return acc[..., -1]
    if score == "fitted_gain":  # evals are evenly spaced in a probe spec
        x = np.arange(acc.shape[-1]) - (acc.shape[-1] - 1) / 2
        slope = (acc * x).sum(axis=-1) / max((x * x).sum(), 1e-12)
        return slope * (acc.shape[-1] - 1)
    raise ValueError(f"unknown score '{score}' (known: {', '.join(SCORES)})")


@dataclass
class RecipeRanking:
    recipe: str
    score: float
    ci_low: float
    ci_high: float
    seeds: int
    step0_acc: float
    final_acc: float
    per_seed: list[float]


@dataclass
class Ranking:
    score_name: str
    confidence: float
    recipes: list[RecipeRanking]  # best first
    beats: dict[tuple[str, str], float]  # P(score_a > score_b) over bootstrap replicates
    replicates: dict[str, np.ndarray]

    def difference_ci(self, a: str, b: str) -> tuple[float, float, float]:
        diff = self.replicates[a] - self.replicates[b]
        alpha = (1 - self.confidence) / 2
        point = next(r.score for r in self.recipes if r.recipe == a) - next(
            r.score for r in self.recipes if r.recipe == b)
        return point, float(np.quantile(diff, alpha)), float(np.quantile(diff, 1 - alpha))


def rank(runs: list[ProbeRun], score: str = "auc_acc", samples: int = 2000,
         confidence: float = 0.95, seed: int = 0) -> Ranking:
    hashes = {r.spec_hash for r in runs}
    if len(hashes) > 1:
        raise ValueError(f"refusing to rank probe runs made with different probe specs: {sorted(hashes)}")
    common = sorted(set.intersection(*(set(r.problem_ids) for r in runs)))
    by_recipe: dict[str, list[np.ndarray]] = {}
    for run in runs:
        columns = [run.problem_ids.index(i) for i in common]
        by_recipe.setdefault(run.recipe, []).append(run.correct[:, columns])
    n_evals = {m.shape[0] for ms in by_recipe.values() for m in ms}
    if len(n_evals) > 1:
        raise ValueError(f"probe runs have different numbers of eval steps: {sorted(n_evals)}")

    rng = np.random.default_rng(seed)
    n_problems = len(common)
    problem_draws = rng.integers(0, n_problems, size=(samples, n_problems))
    replicates: dict[str, np.ndarray] = {}
    rankings = []
    alpha = (1 - confidence) / 2
    for recipe, mats in by_recipe.items():
        stack = np.stack(mats)  # [seeds, evals, problems]
        per_seed = run_scores(stack, score)
        seed_draws = rng.integers(0, len(mats), size=(samples, len(mats)))
        resampled = stack[:, :, problem_draws]  # [seeds, evals, samples, problems]
        scores = run_scores(np.moveaxis(resampled, 2, 1), score)  # [seeds, samples]
        replicates[recipe] = np.take_along_axis(scores.T, seed_draws, axis=1).mean(axis=1)
        acc = stack.mean(axis=2)
        rankings.append(RecipeRanking(
            recipe=recipe, score=float(per_seed.mean()),
            ci_low=float(np.quantile(replicates[recipe], alpha)),
            ci_high=float(np.quantile(replicates[recipe], 1 - alpha)),
            seeds=len(mats), step0_acc=float(acc[:, 0].mean()), final_acc=float(acc[:, -1].mean()),
            per_seed=[float(s) for s in per_seed]))
    rankings.sort(key=lambda r: -r.score)
    beats = {(a.recipe, b.recipe): float((replicates[a.recipe] > replicates[b.recipe]).mean())
             for a in rankings for b in rankings if a.recipe != b.recipe}
    return Ranking(score, confidence, rankings, beats, replicates)


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (average ranks for ties); nan when either side is constant."""
    def ranks(v: list[float]) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        order = v.argsort()
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])

