"""Decision accuracy (DataDecide's measure) of cheap probes and pre-RL signals against a long-RL target.

The target is the sweep's probe run `multiplier` times longer, on its own seeds and its own
held-out eval problems, so the probe and the target are independent samples of each recipe's
RL behaviour. A recipe pair counts only when the target separates it (the bootstrap CI of the
target's score difference excludes 0); pairs the target cannot order are reported apart.

Every decider is scored on those pairs:
- a *probe budget* (steps, seeds, eval problems): the sweep's probes truncated to their first
  evals, a subset of their seeds and of their eval problems (a 40-step probe holds its 10-step
  evals; nothing is re-run), priced from the probes' own stage timings;
- a *cheap signal* measured before RL or in its first steps (step-0 pass@k, few-shot accuracy,
  validation loss, step-0 policy entropy, early reward slope, and the entropy-performance fit
  R = -a*exp(H) + b of Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs").
The target runs' own curves are also read as `validate-probe --curves` reads them (signals at
each budget against the curves' ends, `pipelines.curves.measure_curves`), so that the sweep's
decision.json carries the same `definitions` and one row per signal and budget, and can serve as
a `probe.calibration`.
Accuracy and CI come from pipelines.agreement, the computation `validate-probe --curves` uses:
the point is the mean over the separated pairs of the decider's outcome against the target's
point order; the CI resamples those pairs and scores, in draw b, the decider's bootstrap
replicate b (seeds and eval problems resampled) against the same point order, so the point
and the interval are about one quantity.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path

import numpy as np

from pipelines.agreement import Accuracy, PairBootstrap, finite, pair_outcomes
from pipelines.curves import TARGET_SUFFIX, CurveDecision, Definitions, measure_curves, probe_curves
from pipelines.errors import InputError
from pipelines.plan import Plan, build_plan, fingerprint
from pipelines.run_configs import ProblemSource
from pipelines.ranking import ProbeRun, Ranking, rank, run_scores
from pipelines.results import SweepResults, collect
from pipelines.store import RunStore, StageRun
from pipelines.sweep import Sweep, probe_spec

SLOPE_STEPS = 10  # early reward slope: least-squares slope of the training reward over these steps
ENTROPY_FIT_STEPS = 20  # entropy-performance fit on the evals of the first steps
SUBSETS = 20  # random eval-problem subsets averaged for a point estimate below the full set


# -- the target's plan -------------------------------------------------------------------------

def target_plan(sweep: Sweep, source: Path, multiplier: int, seeds: list[int],
                eval_set: Path | None = None) -> tuple[Plan, Plan]:
    """The sweep's own plan and the plan of its long-run target probes.

    The target trains on the probe's problems but evaluates on its own held-out problems: the
    next problems of the toy eval split (or `eval_set`, a JSONL file), so that the probe and
    the target do not share the noise of one eval sample.
    """
    shared = sorted(set(seeds) & set(sweep.probe.seeds))
    if shared:  # a target on a probe's seed replays the probe's first steps: agreement by construction
        raise InputError(f"--target-seeds: seed {shared[0]} is also a probe seed of {source}; the target "
                         "needs seeds of its own")
    plan = build_plan(sweep, source)
    spec = probe_spec(sweep, source)
    # the same number of evaluations as the short probe: a target costs `multiplier` times the
    # training, not also `multiplier` times the evaluation
    long_spec = spec.model_copy(update={
        "name": f"{spec.name}-x{multiplier}", "steps": spec.steps * multiplier,
        "eval_every": spec.eval_every * multiplier, "checkpoint_every": spec.checkpoint_every * multiplier})
    target = Plan(sweep.name + TARGET_SUFFIX, plan.executor, held_out(plan.problems, eval_set), {},
                  plan.curation_executor, plan.base, plan.midtrain)
    target.role(target.problems, kind="difficulty" if target.problems.config.difficulty == "auto" else "problems")
    for recipe, replica, checkpoint in plan.checkpoints():
        target.add_probes(recipe, checkpoint, long_spec, seeds, sweep.probe.verl, replica)
    return plan, target


def held_out(problems: StageRun, eval_set: Path | None) -> StageRun:
    """The problems stage with its eval set replaced by problems the probe never evaluates on.

    A difficulty-controlled set (select_problems) gets a disjoint pool; its train pool is the
    probe's, so the levels it chooses are the probe's too.
    """
    if problems.stage == "select_problems":
        return StageRun(problems.stage, problems.config,
                        {**problems.inputs, "pool": held_out(problems.inputs["pool"], eval_set)},
                        label="difficulty control (target's held-out eval)")
    current = problems.config.eval_set
    if eval_set is not None:
        replaced = ProblemSource(path=str(eval_set), fingerprint=fingerprint(eval_set))
    elif current.path:
        raise InputError("--target-eval-set: the sweep's eval set is a file; the target needs its own "
                         "held-out eval problems (a JSONL file disjoint from the probe's)")
    else:  # the toy split's next problems: a smaller n is a prefix of a larger one
        replaced = current.model_copy(update={"offset": current.n})
    return StageRun("problems", problems.config.model_copy(update={"eval_set": replaced}), problems.inputs,
                    label="probe/target-eval problems")


# -- results -----------------------------------------------------------------------------------

@dataclass
class Decider:
    """A probe budget or a cheap signal, with its decision accuracy on the separated pairs."""

    name: str
    cpu_hours: float
    accuracy: float
    ci: tuple[float, float]
    steps: int | None = None
    seeds: int | None = None
    eval_problems: int | None = None


@dataclass
class Decision:
    score: str
    confidence: float
    recipes: list[str]
    target: list[dict]  # {"recipe","score","ci"} best first
    separated: list[tuple[str, str]]  # (better, worse) by the target, CI of the difference excluding 0
    ties: list[tuple[str, str]]
    disagreements: list[tuple[str, str]]  # separated pairs the full probe orders the other way
    probe: dict  # steps, seeds, eval_problems
    target_setup: dict
    budgets: list[Decider] = field(default_factory=list)
    signals: list[Decider] = field(default_factory=list)
    curves: CurveDecision | None = None  # the target runs' curves read as `--curves` reads them

    @property
    def full_probe(self) -> Decider:
        return max(self.budgets, key=lambda b: (b.steps, b.seeds, b.eval_problems))

    def cheapest(self, threshold: float = 0.9) -> Decider | None:
        good = [b for b in self.budgets if b.accuracy >= threshold]
        return min(good, key=lambda b: b.cpu_hours) if good else None

    def best_budget(self) -> Decider | None:
        return _best(self.budgets)

    def best_signal(self) -> Decider | None:
        return _best(self.signals)

    def to_json(self) -> dict:
        def decider(d: Decider) -> dict:
            row = {k: v for k, v in asdict(d).items() if v is not None}
            return {**row, "accuracy": finite(d.accuracy), "ci": [finite(c) for c in d.ci]}

        return {
            "pairs": len(self.separated), "target_ties": len(self.ties), "score": self.score,
            "confidence": self.confidence, "recipes": self.recipes, "target": self.target,
            "probe": self.probe, "target_setup": self.target_setup,
            "separated_pairs": [list(p) for p in self.separated], "tied_pairs": [list(p) for p in self.ties],
            "disagreements": [list(p) for p in self.disagreements],
            "budgets": [{k: v for k, v in decider(b).items() if k != "name"} for b in self.budgets],
            "signals": [decider(s) for s in self.signals],
            **(self.curves.rows_json() if self.curves else {}),
        }


def _best(deciders: list[Decider]) -> Decider | None:
    """The most accurate decider, the cheaper one among equals."""
    ranked = [d for d in deciders if not math.isnan(d.accuracy)]
    return max(ranked, key=lambda d: (d.accuracy, -d.cpu_hours)) if ranked else None


def format_accuracy(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"  # nan: no separated pair to decide


def save(decision: Decision, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(decision.to_json(), indent=2) + "\n")
    tmp.replace(path)


# -- the measure -------------------------------------------------------------------------------

def split_pairs(target: Ranking) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The target's (better, worse) pairs whose difference CI excludes 0, and the pairs it ties."""
    order = [r.recipe for r in target.recipes]
    separated, ties = [], []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            _, lo, hi = target.difference_ci(a, b)
            (separated if lo > 0 or hi < 0 else ties).append((a, b))
    return separated, ties


@dataclass
class Judge:
    """The target's verdict on the separated pairs: its point order, and the pair bootstrap every
    decider is scored with (pipelines.agreement: the computation `validate-probe --curves` uses)."""

    pairs: np.ndarray  # [P, 2] recipe indices, the target's better one first
    point: np.ndarray  # [recipes]
    bootstrap: PairBootstrap

    def accuracy(self, points: np.ndarray, replicates: np.ndarray) -> Accuracy:
        """A decider's accuracy from its point scores ([subsets, recipes]: the mean over subsets
        of each pair's outcome) and its bootstrap replicates [samples, recipes], the replicate of
        draw b scored on draw b of the pairs; the target's point order throughout."""
        return self.bootstrap.accuracy(pair_outcomes(points, self.point, self.pairs).mean(axis=0),
                                       pair_outcomes(replicates, self.point, self.pairs))


def first_replica(runs: list[ProbeRun]) -> list[ProbeRun]:
    """Each recipe's probe runs on its first mid-training replica (`midtrain.seeds`): probe
    budgets and cheap signals are judged on one mid-training run per recipe, seed-paired
    across recipes, while the target ranks with every replica."""
    first: dict[str, int | None] = {}
    for run in runs:
        if run.recipe not in first or (run.replica is not None and run.replica < first[run.recipe]):
            first[run.recipe] = run.replica
    return [run for run in runs if run.replica == first[run.recipe]]


def stack_runs(runs: list[ProbeRun], recipes: list[str]) -> tuple[np.ndarray, list[int], list[int]]:
    """[recipes, seeds, evals, problems] correctness on the eval problems every run shares,
    seeds in the same order for every recipe (runs with the same seed share their RL prompt
    stream, as common random numbers)."""
    runs = [r for r in runs if r.recipe in recipes]
    seeds = sorted({r.seed for r in runs})
    by_key = {(r.recipe, r.seed): r for r in runs}
    missing = [f"{recipe} seed {s}" for recipe in recipes for s in seeds if (recipe, s) not in by_key]
    if missing:
        raise ValueError(f"probe runs missing for a seed-paired comparison: {', '.join(missing)}")
    steps = {tuple(r.eval_steps) for r in runs}
    if len(steps) > 1:
        raise ValueError(f"probe runs have different eval steps: {sorted(steps)}")
    common = sorted(set.intersection(*(set(r.problem_ids) for r in runs)))
    stack = np.stack([np.stack([by_key[(recipe, s)].correct[:, [by_key[(recipe, s)].problem_ids.index(i)
                                                                   for i in common]] for s in seeds])
                      for recipe in recipes])
    return stack, seeds, list(runs[0].eval_steps)


def budget_steps(eval_steps: list[int]) -> list[int]:
    """Probe lengths to try: the first eval step, then doubling (5, 10, 20, 40 for evals every 5),
    and always the whole probe."""
    chosen = [s for s in eval_steps if s > 0][:1]
    for step in eval_steps:
        if step >= 2 * chosen[-1]:
            chosen.append(step)
    return sorted(set(chosen) | {eval_steps[-1]})


def budget_problems(n_problems: int) -> list[int]:
    return sorted({max(1, n_problems >> i) for i in range(4)})


@dataclass
class RunCost:
    """Where a probe run's CPU time went, to price a truncated probe from a full one."""

    cpu_per_wall: float
    profile_s: float
    step_s: dict[int, float]  # training step -> wall seconds
    eval_s: float  # wall seconds of one evaluation of the whole eval set

    @classmethod
    def of(cls, run: ProbeRun, summary: dict) -> "RunCost":
        timings = summary.get("timings", {})
        step_s = {int(s): v for s, v in run.metrics.get("timing_s/step", [])}
        total = timings.get("total_s") or 0.0
        if not total or not step_s:  # no timings (another engine): price by steps alone
            steps = max(run.eval_steps) or 1
            return cls(1.0, 0.0, {s: run.cpu_seconds / steps for s in range(1, steps + 1)}, 0.0)
        return cls(run.cpu_seconds / total if run.cpu_seconds else 1.0, timings.get("profile_s", 0.0),
                   step_s, timings.get("eval_s", 0.0) / len(run.eval_steps))

    def cpu_seconds(self, steps: int, evals: int, eval_fraction: float = 1.0, profile: bool = True) -> float:
        wall = (self.profile_s if profile else 0.0) + sum(v for s, v in self.step_s.items() if s <= steps)
        return self.cpu_per_wall * (wall + self.eval_s * evals * eval_fraction)


def measure(store: RunStore, sweep: str, score: str, samples: int = 2000,
            confidence: float = 0.95, definitions: Definitions | None = None) -> Decision:
    probes, target = collect(store, sweep), collect(store, sweep + TARGET_SUFFIX)
    return decide(probes, target.probes, score, samples, confidence, definitions=definitions)


def decide(probes: SweepResults, target_runs: list[ProbeRun], score: str, samples: int = 2000,
           confidence: float = 0.95, seed: int = 0, definitions: Definitions | None = None) -> Decision:
    """`definitions`: how the target runs' curves are read (default: `samples`, `confidence`)."""
    group = probes.sweep + TARGET_SUFFIX  # the group `validate-probe --curves WORKSPACE` reads
    curves = measure_curves({group: probe_curves(target_runs, group, Path(group))},
                            definitions or Definitions(samples=samples, confidence=confidence, seed=seed))
    target = rank(target_runs, score=score, samples=samples, confidence=confidence, seed=seed + 1)
    recipes = [r.recipe for r in target.recipes]
    separated, ties = split_pairs(target)
    index = {r: i for i, r in enumerate(recipes)}
    judge = Judge(np.array([(index[a], index[b]) for a, b in separated], dtype=int).reshape(-1, 2),
                  np.array([r.score for r in target.recipes]),
                  PairBootstrap([probes.sweep] * len(separated), samples, confidence, seed + 2))

    probes = replace(probes, probes=first_replica(probes.probes))
    stack, seeds, eval_steps = stack_runs(probes.probes, recipes)
    costs = {(r.recipe, r.seed): RunCost.of(r, probes.probe_info[r.key].read_json("summary.json"))
             for r in probes.probes if r.recipe in index}
    rng = np.random.default_rng(seed)
    budgets = [_budget(judge, stack, eval_steps, steps, k, m, score, list(costs.values()), rng)
               for steps in budget_steps(eval_steps) for k in range(1, len(seeds) + 1)
               for m in budget_problems(stack.shape[-1])]
    signals = [_signal(judge, name, values, cost, rng)
               for name, (values, cost) in cheap_signals(probes, recipes, seeds, stack, eval_steps, costs).items()]

    full = run_scores(stack, score).mean(axis=1)
    disagreements = [(a, b) for (a, b), (i, j) in zip(separated, judge.pairs) if full[i] <= full[j]]
    target_by = {r.recipe: r for r in target.recipes}
    return Decision(
        score=score, confidence=confidence, recipes=recipes,
        target=[{"recipe": r, "score": target_by[r].score, "ci": [target_by[r].ci_low, target_by[r].ci_high]}
                for r in recipes],
        separated=separated, ties=ties, disagreements=disagreements,
        probe={"steps": eval_steps[-1], "seeds": seeds, "eval_problems": stack.shape[-1]},
        target_setup={"steps": max(max(r.eval_steps) for r in target_runs),
                      "seeds": sorted({r.seed for r in target_runs}),
                      "eval_problems": len(set.intersection(*(set(r.problem_ids) for r in target_runs)))},
        budgets=budgets, signals=signals, curves=curves)


def _budget(judge: Judge, stack: np.ndarray, eval_steps: list[int], steps: int, k: int, m: int, score: str,
            costs: list[RunCost], rng: np.random.Generator) -> Decider:
    """Decision accuracy of the first `steps` steps of k seeds on m eval problems.

    Point estimate: the mean over every k-subset of the seeds and (below the full set) SUBSETS
    random m-subsets of the problems, the same for every recipe. CI: seeds and problems drawn
    with replacement, paired with the target's bootstrap replicates."""
    n_evals = sum(s <= steps for s in eval_steps)
    truncated = stack[:, :, :n_evals]  # [recipes, seeds, evals, problems]
    n_seeds, n_problems = stack.shape[1], stack.shape[-1]
    subsets = [np.arange(n_problems)] if m == n_problems else \
        [rng.choice(n_problems, m, replace=False) for _ in range(SUBSETS)]
    points = []
    for problems in subsets:
        per_run = run_scores(truncated[..., problems], score)  # [recipes, seeds]
        points += [per_run[:, list(c)].mean(axis=1) for c in combinations(range(n_seeds), k)]
    samples = len(judge.bootstrap.weights)
    weights = np.zeros((samples, n_problems))  # each replicate's problem draw as counts
    np.add.at(weights, (np.repeat(np.arange(samples), m), rng.integers(0, n_problems, samples * m)), 1.0 / m)
    acc = np.einsum("rsep,bp->rsbe", truncated, weights)  # [recipes, seeds, samples, evals]
    per_run = run_scores(acc[..., None], score)  # [recipes, seeds, samples]
    draws = rng.integers(0, n_seeds, size=(samples, k))
    replicates = per_run[:, draws, np.arange(samples)[:, None]].mean(axis=-1).T  # [samples, recipes]
    cost = k / n_seeds * sum(c.cpu_seconds(steps, n_evals, m / n_problems) for c in costs)
    accuracy = judge.accuracy(np.array(points), replicates)
    return Decider(f"probe: {steps} steps × {k} seed{'s' * (k > 1)} × {m} problems", cost / 3600,
                   accuracy.accuracy, accuracy.ci, steps=steps, seeds=k, eval_problems=m)


def _signal(judge: Judge, name: str, values: np.ndarray, cpu_seconds: float, rng: np.random.Generator) -> Decider:
    """values: [recipes, seeds] (a signal of the checkpoint alone repeats over seeds); CI: seeds
    drawn with replacement."""
    draws = rng.integers(0, values.shape[1], size=(len(judge.bootstrap.weights), values.shape[1]))
    accuracy = judge.accuracy(values.mean(axis=1)[None], values[:, draws].mean(axis=-1).T)
    return Decider(name, cpu_seconds / 3600, accuracy.accuracy, accuracy.ci)


# -- cheap signals -----------------------------------------------------------------------------

def entropy_fit_ceiling(entropy: np.ndarray, accuracy: np.ndarray) -> float:
    """Cui et al.'s R = -a*exp(H) + b, least squares (linear in a, b); the predicted ceiling at
    H = 0 is b - a. Without a change in entropy there is nothing to fit: a = 0, the ceiling is
    the mean accuracy."""
    x = np.exp(entropy)
    if len(x) < 2 or np.ptp(x) < 1e-12:
        return float(np.mean(accuracy))
    (a, b), *_ = np.linalg.lstsq(np.stack([-x, np.ones_like(x)], axis=1), accuracy, rcond=None)
    return float(b - a)


def _slope(series: list[tuple[int, float]], last_step: int) -> float:
    points = [(s, v) for s, v in series if s <= last_step]
    if len(points) < 2:
        return float("nan")
    steps, values = np.array(points).T
    return float(np.polyfit(steps, values, 1)[0])


def cheap_signals(results: SweepResults, recipes: list[str], seeds: list[int], stack: np.ndarray,
                  eval_steps: list[int], costs: dict) -> dict[str, tuple[np.ndarray, float]]:
    """Each signal as ([recipes, seeds] values, higher meaning better, and its CPU seconds).

    Directions are fixed in advance, never fitted to the target: more pass@k, few-shot and
    step-0 accuracy, lower validation loss, more entropy (room to explore: Cui et al.'s
    performance is traded from entropy), a steeper early reward, a higher fitted ceiling."""
    runs = {(r.recipe, r.seed): r for r in results.probes}
    grid = [[runs[(recipe, s)] for s in seeds] for recipe in recipes]
    all_costs = list(costs.values())

    def per_run(fn, price: float) -> tuple[np.ndarray, float]:
        return np.array([[fn(run) for run in row] for row in grid], dtype=float), price

    profile_s = sum(c.cpu_seconds(0, 0) for c in all_costs)  # the step-0 profile: pass@k and few-shot
    signals: dict[str, tuple[np.ndarray, float]] = {}
    for k in sorted({int(k) for row in grid for run in row for k in run.profile.get("pass_at_k", {})}):
        signals[f"step-0 pass@{k}"] = per_run(lambda run: run.profile.get("pass_at_k", {}).get(str(k), np.nan),
                                              profile_s)
    signals["few-shot accuracy"] = per_run(lambda run: run.profile.get("fewshot", {}).get("acc", np.nan), profile_s)
    signals["step-0 held-out accuracy"] = (stack[:, :, 0].mean(axis=-1),
                                           sum(c.cpu_seconds(0, 1, profile=False) for c in all_costs))
    shared_val = results.validation_loss(recipes)
    if shared_val is not None:
        signals["−validation loss"] = (np.repeat(-shared_val[1][:, None], len(seeds), axis=1), 0.0)
    signals["step-0 policy entropy"] = per_run(  # logged by the first update, on the step-0 policy's rollouts
        lambda run: dict(run.metrics.get("actor/entropy", [])).get(1, np.nan),
        sum(c.cpu_seconds(1, 0, profile=False) for c in all_costs))
    slope_steps, fit_steps = min(SLOPE_STEPS, eval_steps[-1]), min(ENTROPY_FIT_STEPS, eval_steps[-1])
    signals[f"reward slope, steps 1–{slope_steps}"] = per_run(
        lambda run: _slope(run.metrics.get("critic/score/mean", []), slope_steps),
        sum(c.cpu_seconds(slope_steps, 0, profile=False) for c in all_costs))
    fit_evals = sum(s <= fit_steps for s in eval_steps)
    signals[f"entropy fit −a·e^H+b at H=0, steps 0–{fit_steps}"] = per_run(
        lambda run: _entropy_ceiling(run, fit_steps),
        sum(c.cpu_seconds(fit_steps, fit_evals, profile=False) for c in all_costs))
    return {name: value for name, value in signals.items() if not np.isnan(value[0]).any()}


def _entropy_ceiling(run: ProbeRun, last_step: int) -> float:
    # the policy evaluated after step s is the one whose rollouts step s + 1 trains on (and logs
    # the entropy of)
    entropy = dict(run.metrics.get("actor/entropy", []))
    points = [(entropy[s + 1], acc) for s, acc in zip(run.eval_steps, run.accuracy)
              if s <= last_step and s + 1 in entropy]
    if len(points) < 2:
        return float("nan")
    h, r = np.array(points).T
    return entropy_fit_ceiling(h, r)
