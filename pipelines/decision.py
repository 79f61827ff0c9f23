"""Decision accuracy of the short probe against a long-run target (DataDecide's measure).

The target is the same probe run several times longer, on separate seeds, so
the short probe and the target are independent samples of each recipe's RL
behaviour. Decision accuracy is the share of recipe pairs the short probe
orders like the target; its uncertainty comes from pairing the bootstrap
replicates of both rankings (seeds and eval problems resampled).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipelines.plan import Plan, build_plan
from pipelines.ranking import decision_accuracy, rank
from pipelines.results import collect
from pipelines.store import RunStore
from pipelines.sweep import Sweep

TARGET_SUFFIX = "--target"


def target_plan(sweep: Sweep, source: Path, multiplier: int, seeds: list[int]) -> tuple[Plan, Plan]:
    """The sweep's own plan and the plan of its long-run target probes."""
    from rl_probe.spec import get_probe_spec

    plan = build_plan(sweep, source)
    spec = get_probe_spec(sweep.probe.spec)
    # the same number of evaluations as the short probe: a target costs `multiplier` times the
    # training, not also `multiplier` times the evaluation (half of a short probe's time)
    long_spec = spec.model_copy(update={
        "name": f"{spec.name}-x{multiplier}", "steps": spec.steps * multiplier,
        "eval_every": spec.eval_every * multiplier, "checkpoint_every": spec.checkpoint_every * multiplier})
    target = Plan(sweep.name + TARGET_SUFFIX, plan.executor, plan.problems, {}, plan.curation_executor,
                  plan.base, plan.midtrain)
    for recipe in {r for r, _ in plan.probes}:
        target.add_probes(recipe, plan.final_checkpoint(recipe), long_spec, seeds, sweep.probe.verl)
    return plan, target


@dataclass
class DecisionAccuracy:
    value: float
    ci_low: float
    ci_high: float
    pairs: int
    short_order: list[str]
    target_order: list[str]
    score: str
    short_seeds: list[int]
    target_seeds: list[int]
    short_steps: int
    target_steps: int


def measure(store: RunStore, sweep: str, score: str, samples: int = 2000,
            confidence: float = 0.95) -> DecisionAccuracy:
    short_runs = collect(store, sweep).probes
    target_runs = collect(store, sweep + TARGET_SUFFIX).probes
    short = rank(short_runs, score=score, samples=samples, confidence=confidence, seed=1)
    target = rank(target_runs, score=score, samples=samples, confidence=confidence, seed=2)
    recipes = [r.recipe for r in short.recipes]
    value = decision_accuracy({r.recipe: r.score for r in short.recipes},
                              {r.recipe: r.score for r in target.recipes})
    replicates = np.array([
        decision_accuracy({r: short.replicates[r][i] for r in recipes},
                          {r: target.replicates[r][i] for r in recipes})
        for i in range(samples)])
    alpha = (1 - confidence) / 2
    return DecisionAccuracy(
        value=value, ci_low=float(np.quantile(replicates, alpha)),
        ci_high=float(np.quantile(replicates, 1 - alpha)), pairs=len(recipes) * (len(recipes) - 1) // 2,
        short_order=recipes, target_order=[r.recipe for r in target.recipes], score=score,
        short_seeds=sorted({r.seed for r in short_runs}), target_seeds=sorted({r.seed for r in target_runs}),
        short_steps=max(r.eval_steps[-1] for r in short_runs),
        target_steps=max(r.eval_steps[-1] for r in target_runs))


def save(result: DecisionAccuracy, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result), indent=2))
