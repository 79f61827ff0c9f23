"""Ranking recipes by RL-amenability, with bootstrap confidence over seeds and prompts.

The unit of evidence is a probe run: one checkpoint, one probe spec, one seed,
with held-out accuracy per eval problem at every eval step. A recipe's score
is the mean over its mid-training replicas of the mean over probe seeds of a
per-run score: by default the area under the held-out accuracy curve, i.e.
how well the checkpoint does *under* RL, as OctoThinker judged recipes.
Gain-over-step-0 scores are available too, but alone they reward a recipe for
starting weak.

The bootstrap is hierarchical (`hierarchical_replicates`): mid-training
replicas of a recipe (the same recipe mid-trained with other data-order seeds,
`midtrain.seeds`) at the outer level, probe seeds within each drawn replica,
and eval problems (the same resampled problems for every run, so recipes stay
paired). Probe seeds are paired too: recipes probed with the same seeds draw the
same seeds in a replicate (a seed is the same RL prompt stream for every recipe).
The seed and replica levels undo the percentile bootstrap's (n-1)/n shrinkage
(`inflate`): with 2 or 3 seeds it would understate the spread by 18-29 %.
With one mid-training run per recipe the interval is conditional on
that run: two mid-training runs of one recipe can differ by more than it
(issue 19), which is why `Ranking.sources` names what an interval includes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

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
    replica: int | None = None  # the mid-training seed of its checkpoint; None: one mid-training run

    @property
    def accuracy(self) -> np.ndarray:
        return self.correct.mean(axis=1)


def load_eval_correctness(run_dir: Path, split: str = "eval") -> tuple[list[int], list[str], np.ndarray]:
    """Per-problem correctness at every eval step, from the probe's eval rollouts (`split`
    "eval-sampled": its avg@k rows, at the first and last eval of a spec with eval_sampled)."""
    per_step: dict[int, dict[str, list[float]]] = {}
    for path in sorted((run_dir / "rollouts").glob("step_*.jsonl")):
        step = int(path.stem.split("_")[1])
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("split", "eval") != split:
                continue
            per_step.setdefault(step, {}).setdefault(str(row["id"]), []).append(float(row["acc"]))
    if not per_step:
        raise ValueError(f"{run_dir}: no {split} rollouts")
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
    per_replica: dict[int | None, float] = field(default_factory=dict)  # replica seed -> its score

    @property
    def replica_spread(self) -> float:
        """max - min of the per-replica scores: how far two mid-training runs of the recipe apart."""
        return max(self.per_replica.values()) - min(self.per_replica.values())


@dataclass
class Ranking:
    score_name: str
    confidence: float
    recipes: list[RecipeRanking]  # best first
    beats: dict[tuple[str, str], float]  # P(score_a > score_b) + P(=)/2 over bootstrap replicates
    replicates: dict[str, np.ndarray]
    sources: str = ""  # which sources of variance the intervals include, for every interval's label

    def difference_ci(self, a: str, b: str) -> tuple[float, float, float]:
        diff = self.replicates[a] - self.replicates[b]
        alpha = (1 - self.confidence) / 2
        point = next(r.score for r in self.recipes if r.recipe == a) - next(
            r.score for r in self.recipes if r.recipe == b)
        return point, float(np.quantile(diff, alpha)), float(np.quantile(diff, 1 - alpha))


def inflate(drawn: np.ndarray, center: np.ndarray, n: int) -> np.ndarray:
    """Undo the percentile bootstrap's shrinkage at a level of n units: the mean of n draws
    with replacement varies by (n-1)/n of the unbiased variance of a mean, so the draw's
    distance from the level's own mean is scaled by sqrt(n / (n-1))."""
    return drawn if n < 2 else center + math.sqrt(n / (n - 1)) * (drawn - center)


class SeedDraws:
    """Probe-seed draws shared by every recipe whose runs have the same seeds: seed s gives
    every recipe the same RL prompt stream and random draws, so the bootstrap pairs them (as
    it pairs eval problems and replicas). Keyed by the seeds, the replica and the draw's slot."""

    def __init__(self, samples: int, rng: np.random.Generator):
        self.samples, self.rng, self.cache = samples, rng, {}

    def __call__(self, seeds: tuple, replica, slot: int) -> np.ndarray:
        key = (seeds, replica, slot)
        if key not in self.cache:
            self.cache[key] = self.rng.integers(0, len(seeds), size=(self.samples, len(seeds)))
        return self.cache[key]


def hierarchical_replicates(replicas: list[np.ndarray], score: str, problem_draws: np.ndarray,
                            replica_draws: np.ndarray | None, seed_draws) -> np.ndarray:
    """Bootstrap replicates of one recipe's score, [samples].

    `replicas`: per mid-training replica, (its key, its probe seeds, its runs' correctness
    [seeds, evals, problems]). Each replicate draws replicas with replacement (`replica_draws`
    [samples, n_replicas] indices; None with one replica), then probe seeds with replacement
    *within each drawn replica* (`seed_draws(seeds, replica, slot)`, shared with the other
    recipes; a replica drawn twice contributes two inner resamples, as a two-stage bootstrap
    does), on the eval problems of `problem_draws` [samples, problems], which every recipe
    shares. The score of a replicate is the mean over drawn replicas of the mean over their
    drawn seeds, each level's spread inflated by sqrt(n / (n-1)) (`inflate`).
    """
    # per replica: every run's score on every problem resample, [seeds, samples]
    run_replicates = [run_scores(np.moveaxis(stack[:, :, problem_draws], 2, 1), score)
                      for _, _, stack in replicas]

    def inner(index: int, slot: int) -> np.ndarray:  # mean over probe seeds drawn with replacement
        key, seeds, _ = replicas[index]
        scores = run_replicates[index].T  # [samples, seeds]
        drawn = np.take_along_axis(scores, seed_draws(seeds, key, slot), axis=1).mean(axis=1)
        return inflate(drawn, scores.mean(axis=1), len(seeds))

    if replica_draws is None:
        return inner(0, 0)
    slots = [np.stack([inner(r, k) for r in range(len(replicas))], axis=1)  # [samples, replicas]
             for k in range(replica_draws.shape[1])]
    drawn = np.mean([np.take_along_axis(slot, replica_draws[:, [k]], axis=1)[:, 0]
                     for k, slot in enumerate(slots)], axis=0)
    center = np.mean([scores.mean(axis=0) for scores in run_replicates], axis=0)
    return inflate(drawn, center, len(replicas))


def _count(values: set[int]) -> str:
    """'2', or '1–3' where recipes differ (a failed run, the base)."""
    return f"{min(values)}" if len(values) == 1 else f"{min(values)}–{max(values)}"


def _sources(by_recipe: dict[str, dict], n_problems: int) -> str:
    """Which sources of variance the intervals include, said beside every interval."""
    replicas = {len(r) for r in by_recipe.values()}
    seeds = _count({len(m) for r in by_recipe.values() for m in r.values()})
    if replicas == {1}:
        return (f"probe seeds ({seeds}) and eval problems ({n_problems}); conditional on one "
                "mid-training run per recipe (`midtrain.seeds` adds replicas)")
    return (f"mid-training replicas ({_count(replicas)} per recipe), probe seeds ({seeds} per "
            f"replica) and eval problems ({n_problems})")


def rank(runs: list[ProbeRun], score: str = "auc_acc", samples: int = 2000,
         confidence: float = 0.95, seed: int = 0) -> Ranking:
    hashes = {r.spec_hash for r in runs}
    if len(hashes) > 1:
        raise ValueError(f"refusing to rank probe runs made with different probe specs: {sorted(hashes)}")
    common = sorted(set.intersection(*(set(r.problem_ids) for r in runs)))
    # recipe -> mid-training replica -> its probe runs' correctness on the common problems, by seed
    by_recipe: dict[str, dict[int | None, list[np.ndarray]]] = {}
    seeds_of: dict[tuple[str, int | None], list[int]] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        columns = [run.problem_ids.index(i) for i in common]
        by_recipe.setdefault(run.recipe, {}).setdefault(run.replica, []).append(run.correct[:, columns])
        seeds_of.setdefault((run.recipe, run.replica), []).append(run.seed)
    n_evals = {m.shape[0] for reps in by_recipe.values() for ms in reps.values() for m in ms}
    if len(n_evals) > 1:
        raise ValueError(f"probe runs have different numbers of eval steps: {sorted(n_evals)}")

    rng = np.random.default_rng(seed)
    n_problems = len(common)
    problem_draws = rng.integers(0, n_problems, size=(samples, n_problems))
    # Recipes mid-trained with the same replica seeds are paired like the problems: replica s of
    # each may share stages (a shared stable stage), so their replicas are drawn together.
    replica_draws: dict[tuple, np.ndarray] = {}
    seed_draws = SeedDraws(samples, rng)
    replicates: dict[str, np.ndarray] = {}
    rankings = []
    alpha = (1 - confidence) / 2
    for recipe, reps in by_recipe.items():
        order = sorted(reps, key=str)
        stacks = [np.stack(reps[r]) for r in order]  # each [seeds, evals, problems]
        if len(order) > 1 and tuple(order) not in replica_draws:
            replica_draws[tuple(order)] = rng.integers(0, len(order), size=(samples, len(order)))
        draws = replica_draws.get(tuple(order)) if len(order) > 1 else None
        replicates[recipe] = hierarchical_replicates(
            [(r, tuple(seeds_of[(recipe, r)]), stack) for r, stack in zip(order, stacks)],
            score, problem_draws, draws, seed_draws)
        per_replica = {r: float(run_scores(stack, score).mean()) for r, stack in zip(order, stacks)}
        everything = np.concatenate(stacks)
        acc = everything.mean(axis=2)
        rankings.append(RecipeRanking(
            recipe=recipe, score=float(np.mean(list(per_replica.values()))),
            ci_low=float(np.quantile(replicates[recipe], alpha)),
            ci_high=float(np.quantile(replicates[recipe], 1 - alpha)),
            seeds=len(everything), step0_acc=float(acc[:, 0].mean()), final_acc=float(acc[:, -1].mean()),
            per_seed=[float(s) for s in run_scores(everything, score)], per_replica=per_replica))
    rankings.sort(key=lambda r: -r.score)
    # a tie in a replicate is half a win each way: two recipes that never score differ by nothing
    beats = {(a.recipe, b.recipe): float((replicates[a.recipe] > replicates[b.recipe]).mean()
                                         + 0.5 * (replicates[a.recipe] == replicates[b.recipe]).mean())
             for a in rankings for b in rankings if a.recipe != b.recipe}
    return Ranking(score, confidence, rankings, beats, replicates, _sources(by_recipe, n_problems))


@dataclass
class SeparationBudget:
    """How many probe seeds or eval problems would separate a pair that the interval does not.

    The pair's per-unit, per-problem scores (units: probe seeds, or mid-training replicas where
    the sweep has them) split into a unit part, a problem part and their interaction (two-way
    ANOVA). The paired bootstrap above resamples units and problems at once, which counts the
    interaction three times (Owen 2007, the pigeonhole bootstrap), so its variance at u units and
    p problems is about unit_var / u + problem_var / p + 3 interaction_var / (u p). A budget is
    the least count at which that interval would exclude 0 with probability `power` if the true
    difference were the measured one; the other count stays as it is."""
    a: str
    b: str
    difference: float
    unit: str  # "probe seeds" or "mid-training replicas"
    n_units: int
    n_problems: int
    unit_var: float | None  # None with fewer than 2 units on either side: the parts cannot be told apart
    problem_var: float | None
    interaction_var: float | None
    units_needed: int | None  # at n_problems; None: no count suffices, or the parts are unknown
    problems_needed: int | None  # at n_units; None likewise

    def variance(self, units: float, problems: float) -> float | None:
        if self.unit_var is None:
            return None
        return self.unit_var / units + self.problem_var / problems + 3 * self.interaction_var / (units * problems)

    @property
    def standard_error(self) -> float | None:
        variance = self.variance(self.n_units, self.n_problems)
        return None if variance is None else math.sqrt(variance)


def _two_way(table: np.ndarray) -> tuple[float, float, float]:
    """Unit, problem and interaction variances of a [units, problems] table (random effects,
    moment estimates clipped at 0)."""
    units, problems = table.shape
    rows, cols = table.mean(axis=1), table.mean(axis=0)
    residual = table - rows[:, None] - cols[None, :] + table.mean()
    interaction = float((residual ** 2).sum() / ((units - 1) * (problems - 1)))
    return (max(float(np.var(rows, ddof=1)) - interaction / problems, 0.0),
            max(float(np.var(cols, ddof=1)) - interaction / units, 0.0), interaction)


def separation_budget(runs: list[ProbeRun], a: str, b: str, score: str = "auc_acc",
                      confidence: float = 0.95, power: float = 0.8) -> SeparationBudget:
    common = sorted(set.intersection(*(set(r.problem_ids) for r in runs)))
    by_replica = len({r.replica for r in runs}) > 1
    unit = "mid-training replicas" if by_replica else "probe seeds"

    def table(recipe: str) -> tuple[list, np.ndarray]:  # its units, and their per-problem scores
        grouped: dict = {}
        for run in (r for r in runs if r.recipe == recipe):
            columns = [run.problem_ids.index(i) for i in common]
            # every score is linear in per-problem correctness: a problem's own score averages to the run's
            per_problem = run_scores(np.moveaxis(run.correct[:, columns], 1, 0)[:, :, None], score)
            grouped.setdefault(run.replica if by_replica else run.seed, []).append(per_problem)
        keys = sorted(grouped, key=str)
        return keys, np.array([np.mean(grouped[k], axis=0) for k in keys])

    (keys_a, table_a), (keys_b, table_b) = table(a), table(b)
    difference = float(table_a.mean() - table_b.mean())
    n_units, n_problems = min(len(keys_a), len(keys_b)), len(common)
    parts = None
    if n_units > 1 and keys_a == keys_b:  # paired: the same seeds (replicas) on both sides
        parts = _two_way(table_a - table_b)
    elif n_units > 1:  # unpaired: each side's unit and interaction parts add, as if both had n_units
        (unit_a, _, int_a), (unit_b, _, int_b) = _two_way(table_a), _two_way(table_b)
        columns = table_a.mean(axis=0) - table_b.mean(axis=0)
        problem = max(float(np.var(columns, ddof=1)) - int_a / len(keys_a) - int_b / len(keys_b), 0.0)
        parts = (unit_a + unit_b, problem, int_a + int_b)
    normal = NormalDist()
    target = (difference / (normal.inv_cdf(1 - (1 - confidence) / 2) + normal.inv_cdf(power))) ** 2

    def least(variance_at) -> int | None:
        """The least count n whose variance reaches the target, the other count held: in one
        count the variance is fixed + per_count / n, both read off `SeparationBudget.variance`."""
        fixed = variance_at(math.inf)
        per_count = variance_at(1) - fixed
        return None if fixed >= target else max(2, math.ceil(per_count / (target - fixed)))

    budget = SeparationBudget(a, b, difference, unit, n_units, n_problems,
                              *(parts if parts else (None, None, None)), None, None)
    if parts:
        budget.units_needed = least(lambda units: budget.variance(units, n_problems))
        budget.problems_needed = least(lambda problems: budget.variance(n_units, problems))
    return budget


def verdict(ranking: Ranking, runs: list[ProbeRun]) -> str:
    """The report's first line: a winner only where the evidence separates it from every other
    recipe, on intervals that include RL-seed variance.

    No held-out problem solved by any checkpoint at any eval means the probe measured nothing;
    a lead whose interval over any other recipe includes 0 is not a win, whatever the point
    order; with one probe run of a recipe its interval covers eval problems only, so the lead is
    reported conditional on that RL seed and no winner is named."""
    score = ranking.score_name
    if not any(run.correct.any() for run in runs):
        return (f"**No reward signal**: no checkpoint solved any held-out problem at any eval step, so the "
                f"probe cannot rank these {len(ranking.recipes)} recipes (every {score} is 0). Make the "
                "probe problems easier or the prompt template clearer (docs/toy-world.md: difficulty control).")
    best = ranking.recipes[0]
    interval = f"{ranking.confidence:.0%} CI"
    if len(ranking.recipes) == 1:
        return (f"Only one recipe, **{best.recipe}**: {score} = {best.score:.3f} "
                f"[{best.ci_low:.3f}, {best.ci_high:.3f}]; nothing to rank it against.")
    runner_up, worst = ranking.recipes[1], ranking.recipes[-1]
    point, lo, hi = ranking.difference_ci(best.recipe, runner_up.recipe)
    lead = (f"{best.recipe} − {runner_up.recipe} = {point:+.3f}, {interval} [{lo:+.3f}, {hi:+.3f}]; "
            f"{best.recipe} beats {runner_up.recipe} in {ranking.beats[(best.recipe, runner_up.recipe)]:.0%} "
            "of bootstrap replicates")
    unseparated = [r.recipe for r in ranking.recipes[1:] if ranking.difference_ci(best.recipe, r.recipe)[1] <= 0]
    single = [r.recipe for r in ranking.recipes if r.seeds < 2]
    if not unseparated and single:
        return (f"**{best.recipe}** leads by {score} = {best.score:.3f} [{best.ci_low:.3f}, {best.ci_high:.3f}]: "
                f"{lead}, **conditional on one RL seed** ({', '.join(single)} had one probe run): the interval "
                "covers eval problems only, not another RL seed's run, so the probe names no winner "
                "(`probe.seeds` needs at least 2).")
    if not unseparated:
        return (f"**{best.recipe}** ranks first by {score} = {best.score:.3f} [{best.ci_low:.3f}, "
                f"{best.ci_high:.3f}]: {lead}; its difference to every other recipe excludes 0.")
    if lo > 0:  # ahead of the runner-up, not of a recipe below it with a wider interval
        _, olo, ohi = ranking.difference_ci(best.recipe, unseparated[0])
        return (f"**Not separated** by {score}: the probe names no winner. {best.recipe} leads on the point "
                f"estimate ({best.score:.3f}) and {lead}, but {best.recipe} − {unseparated[0]}: {interval} "
                f"[{olo:+.3f}, {ohi:+.3f}] includes 0.")
    spread = ""
    if worst.recipe != runner_up.recipe:
        _, wlo, whi = ranking.difference_ci(best.recipe, worst.recipe)
        spread = (f" Best − worst ({worst.recipe}): {interval} [{wlo:+.3f}, {whi:+.3f}]"
                  + (", which excludes 0: the recipes differ, but not at the top." if wlo > 0 else ", also includes 0."))
    return (f"**Not separated** by {score}: the probe names no winner. {best.recipe} leads on the point estimate "
            f"({best.score:.3f}), but {lead}, and the interval includes 0.{spread}")


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

