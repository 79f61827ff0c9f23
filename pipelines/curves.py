"""Decision accuracy from long RL curves: how early does reading a curve order a pair of runs as
its end does?

Input is any set of evaluation curves: W&B panel CSV exports, a long-format table (`run, step,
metric, value`, optional `group`, `seed`), or a midprobe workspace's probe runs. Pairs are formed
only inside a group (runs that share one RL set-up). The definitions (`Definitions`) are options
and are written into every output:

- a group's horizon is the last step of its shortest run; a run's target is the mean of its last
  `target_evals` evaluations at or before the horizon;
- a probe of budget k steps sees only evaluations at or before step k, and a group takes part in
  budget k only when k is before its horizon (a probe as long as the target is no probe);
- with several metrics a run's signal and target are computed per metric, then averaged with
  equal weight; runs of one name with several seeds are averaged per step into one curve;
- a pair whose target gap is 0 cannot be right or wrong; a pair whose gap is below `min_gap`
  (and, with `eval_size` N, below the binomial standard error of the difference of two
  N-problem accuracies) is a target tie, reported apart from the separable pairs.

Accuracy and its interval come from `pipelines.agreement`, the computation the sweep mode uses.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from pipelines.agreement import Accuracy, PairBootstrap, pair_outcomes
from pipelines.errors import InputError
from pipelines.results import collect
from pipelines.store import RunStore

TARGET_SUFFIX = "--target"  # the sweep `validate-probe SWEEP.yaml` gives a sweep's long target runs
STEP_COLUMNS = ("Step", "step", "_step")
# budget units a curve may carry, as cumulative counts: a long table's column or a metric of this name
COUNT_UNITS = ("rollouts", "tokens")
BUDGET_UNITS = ("steps", *COUNT_UNITS)
UNFINISHED_NAMED = 6  # a workspace mid-sweep: its unfinished runs named in one line, the first few
IGNORED_SUFFIXES = ("__MIN", "__MAX")
LONG_COLUMNS = ("run", "step", "metric", "value")


@dataclass
class Curve:
    """One run's evaluation curves: metric -> (steps, values), steps increasing."""

    run: str
    group: str
    source: str
    metrics: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # budget unit ("rollouts", "tokens") -> (steps, the count consumed by the end of each step)
    counts: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def last_step(self) -> int:
        return int(min(steps[-1] for steps, _ in self.metrics.values()))

    @property
    def eval_steps(self) -> np.ndarray:
        return np.unique(np.concatenate([steps for steps, _ in self.metrics.values()]))

    def step_limit(self, unit: str, budget: float) -> float:
        """The last step a probe of `budget` (in `unit`) reaches on this run: the budget itself
        in steps, else the last step whose count is within it (-inf: not even the first)."""
        if unit == "steps":
            return float(budget)
        steps, counts = self.counts[unit]
        within = steps[counts <= budget]
        return float(within[-1]) if len(within) else -math.inf

    def count_at(self, unit: str, step: float) -> float:
        """The count consumed by `step` (the last count at or before it; steps: the step)."""
        if unit == "steps":
            return float(step)
        steps, counts = self.counts[unit]
        before = counts[steps <= step]
        return float(before[-1]) if len(before) else 0.0


# -- readers ----------------------------------------------------------------------------------

def _number(text: str, path: Path, where: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{path}: non-numeric cell {text!r} at {where}") from None
    if not math.isfinite(value):
        raise InputError(f"{path}: non-finite cell {text!r} at {where}")
    return value


def _series(points: dict[int, list[float]]) -> tuple[np.ndarray, np.ndarray]:
    steps = sorted(points)
    return np.array(steps, dtype=float), np.array([np.mean(points[s]) for s in steps])


def read_wandb_csv(path: Path) -> list[Curve]:
    """A W&B panel export: a Step column, `<run> - <metric>` columns (one metric per file), the
    `__MIN`/`__MAX` columns of smoothed panels ignored, empty cells where a run has no eval."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise InputError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    step_col = next((i for i, h in enumerate(header) if h in STEP_COLUMNS), None)
    if step_col is None:
        raise InputError(f"{path}: no Step column (a W&B panel export has one; a long table needs "
                         f"columns {', '.join(LONG_COLUMNS)})")
    columns = {i: h for i, h in enumerate(header) if i != step_col and not h.endswith(IGNORED_SUFFIXES)}
    bad = [h for h in columns.values() if " - " not in h]
    if bad:
        raise InputError(f"{path}: column {bad[0]!r} is not '<run> - <metric>'")
    names = {i: h.rsplit(" - ", 1) for i, h in columns.items()}
    points: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        step = _number(row[step_col] if step_col < len(row) else "", path, f"line {line}, Step")
        if step is None:
            raise InputError(f"{path}: empty Step cell at line {line}")
        for i, (run, metric) in names.items():
            value = _number(row[i], path, f"line {line}, column {header[i]!r}") if i < len(row) else None
            if value is not None:
                points[(run, metric)][int(step)].append(value)
    return _curves(points, {run: path.stem for run, _ in points}, path)


def _curves(points: dict[tuple[str, str], dict[int, list[float]]], groups: dict[str, str], path: Path) -> list[Curve]:
    curves: dict[str, Curve] = {}
    for (run, metric), by_step in points.items():
        curve = curves.setdefault(run, Curve(run, groups[run], str(path)))
        (curve.counts if metric in COUNT_UNITS else curve.metrics)[metric] = _series(by_step)
    return list(curves.values())


def read_long(path: Path) -> list[Curve]:
    """A long table (CSV or JSONL): run, step, metric, value; optional group (default: the file's
    name), seed (runs of one name and group with several seeds are averaged per step), and
    `rollouts` / `tokens`: the count the run has consumed by the end of that step."""
    if path.suffix == ".jsonl":
        records = []
        for line, text in enumerate(path.read_text().splitlines(), start=1):
            if text.strip():
                try:
                    records.append({k: "" if v is None else str(v) for k, v in json.loads(text).items()})
                except (json.JSONDecodeError, AttributeError):
                    raise InputError(f"{path}: line {line} is not a JSON object") from None
    else:
        with path.open(newline="") as handle:
            records = list(csv.DictReader(handle))
    missing = [c for c in LONG_COLUMNS if not records or c not in records[0]]
    if missing:
        raise InputError(f"{path}: no {missing[0]} column (a long table has {', '.join(LONG_COLUMNS)})")
    points: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    groups: dict[str, str] = {}
    for line, record in enumerate(records, start=2 if path.suffix != ".jsonl" else 1):
        step = _number(record["step"], path, f"line {line}, step")
        value = _number(record["value"], path, f"line {line}, value")
        if step is None or value is None:
            continue
        group = record.get("group") or path.stem
        run = f"{group}/{record['run']}"  # a run name is unique only inside its group
        groups[run] = group
        points[(run, record["metric"])][int(step)].append(value)
        for unit in COUNT_UNITS:
            count = _number(record.get(unit) or "", path, f"line {line}, {unit}")
            if count is not None:
                points[(run, unit)][int(step)].append(count)
    return _curves(points, groups, path)


def probe_curves(runs: list, group: str, source: Path) -> list[Curve]:
    """Each recipe's held-out accuracy curve from midprobe probe runs (`ProbeRun`s), its seeds
    averaged per step: what `validate-probe` reads of a workspace in both modes."""
    points: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for step, value in zip(run.eval_steps, run.accuracy):
            points[(run.recipe, "held-out accuracy")][int(step)].append(float(value))
    return _curves(points, {recipe: group for recipe, _ in points}, source)


def read_workspace(workspace: Path, sweep: str | None = None, notes: list[str] | None = None) -> list[Curve]:
    """A midprobe workspace's probe runs: each recipe's held-out accuracy curve, its seeds
    averaged per step; one group per sweep. A sweep that `validate-probe` gave long target runs
    (`<sweep>--target`) is read from those: they are the long runs whose ends the early steps
    should foretell. Only finished runs are read (a workspace may be mid-sweep): the others are
    named in one line appended to `notes`; a sweep with fewer than two recipes finished is left
    out with a note, or, when it is the sweep asked for, is an error."""
    store = RunStore(workspace)
    names = sorted({row["sweep"] for row in store.query("SELECT DISTINCT sweep FROM sweep_members")})
    if sweep is not None and sweep not in names:
        raise InputError(f"{workspace}: no sweep '{sweep}' (sweeps: {', '.join(names) or 'none'})")
    wanted = [sweep] if sweep is not None else [n for n in names if not n.endswith(TARGET_SUFFIX)]
    chosen = [n + TARGET_SUFFIX if n + TARGET_SUFFIX in names else n for n in wanted]
    curves = []
    for name in chosen:
        results = collect(store, name)
        unfinished = _unfinished_probes(store, name)
        recipes = sorted({run.recipe for run in results.probes})
        where = f"{workspace}: sweep '{name}'"
        if unfinished and notes is not None:
            named = "; ".join(unfinished[:UNFINISHED_NAMED]) + ("; …" if len(unfinished) > UNFINISHED_NAMED else "")
            notes.append(f"{where}: {len(unfinished)} probe run(s) not finished and not read "
                         f"({named}); read {len(results.probes)} finished")
        if len(recipes) < 2:
            message = (f"{where}: {len(recipes)} recipe(s) with a finished probe run; pairs need two"
                       + (f" ({len(unfinished)} probe run(s) not finished)" if unfinished else ""))
            if sweep is not None:
                raise InputError(message)
            if notes is not None:
                notes.append(message + ": left out")
            continue
        curves += probe_curves(results.probes, name, workspace / name)
    return curves


def _unfinished_probes(store, sweep: str) -> list[str]:
    """'recipe seed s (status)' for each probe run of `sweep` that has not published its results."""
    unfinished = []
    for stage, key, role in store.members(sweep, "probe"):
        if role.get("kind") != "probe" or (store.workspace / stage / key / "manifest.json").is_file():
            continue
        rows = store.query("SELECT status FROM runs WHERE stage=? AND key=?", (stage, key))
        status = rows[0]["status"] if rows else "not started"
        unfinished.append(f"{role.get('recipe')} seed {role.get('seed')} ({status})")
    return sorted(unfinished)


def read_curves(paths: list[Path], metric: str | None = None, sweep: str | None = None,
                notes: list[str] | None = None) -> dict[str, list[Curve]]:
    """Every path's curves by group, checked: a group of at least two runs that share metrics and
    overlap in steps. Errors name the file and what is wrong; what was left unread (a
    workspace's unfinished runs) goes to `notes`."""
    curves: list[Curve] = []
    for path in _expand(paths):
        if path.is_dir():
            curves += read_workspace(path, sweep, notes)
        elif not path.is_file():
            raise InputError(f"{path}: file not found")
        elif path.suffix == ".jsonl":
            curves += read_long(path)
        else:
            with path.open(newline="") as handle:
                header = [h.strip() for h in next(csv.reader(handle), [])]
            curves += read_long(path) if set(LONG_COLUMNS) <= set(header) else read_wandb_csv(path)
    groups = _merge_metric_files(curves)
    if metric is not None:
        try:
            pattern = re.compile(metric)
        except re.error as exc:
            raise InputError(f"--metric {metric}: not a regular expression ({exc})") from None
        known = sorted({m for group in groups.values() for c in group for m in c.metrics})
        if not any(pattern.search(m) for m in known):
            raise InputError(f"--metric {metric}: matches no metric of {', '.join(map(str, paths))} "
                             f"(metrics: {', '.join(known)})")
        for group in groups.values():
            for curve in group:
                curve.metrics = {m: v for m, v in curve.metrics.items() if pattern.search(m)}
    if not groups:  # every sweep of a workspace left out: the notes say why
        raise InputError(f"{', '.join(map(str, paths))}: no group of runs to compare"
                         + "".join(f"; {note}" for note in notes or []))
    for name, group in groups.items():
        _check_group(name, group)
    return groups


def _expand(paths: list[Path]) -> list[Path]:
    """A folder that is not a workspace stands for its .csv and .jsonl files."""
    expanded = []
    for path in paths:
        if path.is_dir() and not (path / "index.sqlite").is_file():
            files = sorted(p for p in path.iterdir() if p.suffix in (".csv", ".jsonl"))
            if not files:
                raise InputError(f"{path}: no .csv or .jsonl files and not a midprobe workspace")
            expanded += files
        else:
            expanded.append(path)
    return expanded


def _merge_metric_files(curves: list[Curve]) -> dict[str, list[Curve]]:
    """W&B exports of the same runs with different metrics are one group (each file holds one
    metric of a set of runs); a file whose runs and metric another file already holds is a group
    of its own (the same run names in another RL set-up)."""
    by_file: dict[str, list[Curve]] = defaultdict(list)
    for curve in curves:
        by_file[curve.source].append(curve)
    groups: dict[str, dict[str, Curve]] = {}
    for file_curves in by_file.values():
        for group_name in sorted({c.group for c in file_curves}):
            members = [c for c in file_curves if c.group == group_name]
            runs, metrics = {c.run for c in members}, {m for c in members for m in c.metrics}
            name = next((n for n, merged in groups.items() if set(merged) == runs
                         and not metrics & {m for c in merged.values() for m in c.metrics}), None)
            if name is None:
                name = group_name if group_name not in groups else f"{group_name} ({members[0].source})"
                groups[name] = {}
            for curve in members:
                merged = groups[name].setdefault(curve.run, Curve(curve.run, name, curve.source))
                merged.metrics.update(curve.metrics)
                merged.counts.update(curve.counts)
    return {name: list(runs.values()) for name, runs in groups.items()}


def _check_group(name: str, group: list[Curve]) -> None:
    source = group[0].source
    if len(group) < 2:
        raise InputError(f"{source}: group '{name}' has one run ({group[0].run}); pairs need two")
    metrics = [set(c.metrics) for c in group]
    if not set.union(*metrics):
        raise InputError(f"{source}: group '{name}' has no metric left to read")
    for curve, held in zip(group, metrics):
        if held != metrics[0]:
            other = sorted(held ^ metrics[0])[0]
            raise InputError(f"{curve.source}: run {curve.run!r} and run {group[0].run!r} of group '{name}' "
                             f"differ in metric {other!r}")
    horizon = min(c.last_step for c in group)
    late = [c for c in group if max(steps[0] for steps, _ in c.metrics.values()) > horizon]
    if late:
        raise InputError(f"{late[0].source}: no overlapping steps in group '{name}': run {late[0].run!r} "
                         f"starts after the shortest run ends (step {horizon})")


# -- definitions and signals ------------------------------------------------------------------

@dataclass
class Definitions:
    target_evals: int = 5
    min_gap: float = 0.0
    eval_size: int | None = None
    rollouts_per_step: int | None = None
    budgets: list[int] | None = None  # in the budget unit; None: doubling from the first eval
    samples: int = 2000
    confidence: float = 0.95
    seed: int = 0
    budget_unit: str | None = None  # steps, rollouts or tokens; None: inferred from the curves

    def check(self) -> None:
        """Options that cannot define a measure: one line, before anything runs."""
        if self.target_evals < 1 or self.samples < 1 or not 0 < self.confidence < 1:
            raise InputError("--target-evals and --samples must be >= 1, --confidence in (0, 1)")
        if self.budget_unit is not None and self.budget_unit not in BUDGET_UNITS:
            raise InputError(f"--budget-unit {self.budget_unit}: not one of {', '.join(BUDGET_UNITS)}")
        if self.rollouts_per_step and self.budget_unit not in (None, "rollouts"):
            raise InputError(f"--rollouts-per-step counts budgets in rollouts; it cannot go with "
                             f"--budget-unit {self.budget_unit}")

    def describe(self) -> dict:
        unit = {"steps": "RL steps", "tokens": "tokens (the curves' cumulative counts)",
                "rollouts": f"rollouts ({self.rollouts_per_step} a step)" if self.rollouts_per_step
                else "rollouts (the curves' cumulative counts)"}[self.budget_unit or "steps"]
        tie = f"target gap below {self.min_gap:g}"
        if self.eval_size:
            tie += (f" or below the binomial standard error of the difference of two {self.eval_size}-problem "
                    "accuracies, sqrt(pa(1-pa)/N + pb(1-pb)/N)")
        return {
            **asdict(self),
            "horizon": "the last step of the group's shortest run",
            "target": f"mean of the run's last {self.target_evals} evaluations at or before the horizon",
            "budget": f"budgets in {unit}; a probe of budget k sees each run's evaluations up to the last step "
                      "whose count is at most k (in steps: at or before step k); a group counts at budget k "
                      "only when every run's probe ends before the horizon",
            "metrics": "signal and target per metric, then the equal-weight mean over metrics; "
                       "seeds of one run averaged per step",
            "pairs": "every pair of runs inside one group",
            "decision": "right (1) when the signal orders the pair as the targets do, 0.5 when it cannot "
                        "order it (equal values, or no value), 0 otherwise",
            "target_ties": f"{tie}: reported apart, never right or wrong; pairs with a gap of 0 are "
                           "excluded from 'all' too",
            "ci": f"{self.confidence:.0%} percentile bootstrap ({self.samples} draws): groups with replacement, "
                  "then pairs within each drawn group; point and interval from the same pair outcomes",
            "signals": SIGNALS,
        }


FALLBACK = "with fewer than 3 evaluations after step 0, or a failed fit, the mean of the last 3"
SIGNALS = {
    "last": "the last evaluation at or before k",
    "mean3": "the mean of the last 3 evaluations at or before k",
    "auc": "area under the curve from the first evaluation to the last at or before k (trapezoids), "
           "divided by that span: the curve's mean height",
    "gain": "the last evaluation at or before k minus the first (step 0)",
    "slope": "least-squares slope over the evaluations at or before k",
    "forecast": "ScaleRL's saturating fit R(C) = R0 + (A - R0) / (1 + (Cmid/C)^B), R0 the first "
                "evaluation, fitted (bounded) to the evaluations at or before k and read at the horizon; "
                + FALLBACK,
    "powerlaw": "a power law in steps R(k) = A - B k^(-c), fitted (bounded: A within [min - span, "
                "max + 2 span] of the values seen, c in [0.01, 3]) to the evaluations after step 0 at or "
                "before k and read at the horizon; " + FALLBACK,
}
FORECASTS = ("forecast", "powerlaw")  # fitted signals: the table counts their fallbacks


def sigmoid(c: np.ndarray, r0: float, a: float, c_mid: float, b: float) -> np.ndarray:
    return r0 + (a - r0) / (1 + (c_mid / c) ** b)


def power_law(k: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * k ** (-c)


def _extrapolate(model, x: np.ndarray, y: np.ndarray, start: list[float], lower: list[float],
                 upper: list[float], horizon: float, fallback: float) -> tuple[float, bool]:
    """`model` fitted to (x, y) within the bounds, read at `horizon`; `fallback` when it fails."""
    from scipy.optimize import curve_fit

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(model, x, y, p0=start, bounds=(lower, upper), maxfev=2000)
    except (RuntimeError, ValueError):
        return fallback, False
    value = float(model(np.array([horizon], dtype=float), *params)[0])
    return (value, True) if math.isfinite(value) else (fallback, False)


def forecast(steps: np.ndarray, values: np.ndarray, horizon: float) -> tuple[float, bool]:
    """The saturating fit read at `horizon`, and whether it fitted (False: the fallback)."""
    fallback = float(values[-3:].mean())
    later = steps > steps[0]
    if later.sum() < 3:
        return fallback, False
    r0, x, y = float(values[0]), steps[later], values[later]
    span = max(float(np.ptp(values)), 1e-6)
    lower, upper = [float(values.min()) - span, 1e-3 * x[0], 0.1], [float(values.max()) + span, 10 * horizon, 5.0]
    start = [float(np.clip(y[-1], lower[0], upper[0])), float(np.clip(np.median(x), lower[1], upper[1])), 1.0]
    return _extrapolate(lambda c, a, c_mid, b: sigmoid(c, r0, a, c_mid, b), x, y, start, lower, upper,
                        horizon, fallback)


def power_forecast(steps: np.ndarray, values: np.ndarray, horizon: float) -> tuple[float, bool]:
    """The power law in steps read at `horizon`, and whether it fitted (False: the fallback)."""
    fallback = float(values[-3:].mean())
    later = steps > 0  # k^(-c) has no value at step 0
    if later.sum() < 3:
        return fallback, False
    x, y = steps[later], values[later]
    # the asymptote is bounded near the values seen: a slow power law would otherwise put it anywhere
    span = max(float(np.ptp(values)), 1e-6)
    lower, upper = [float(values.min()) - span, -np.inf, 0.01], [float(values.max()) + 2 * span, np.inf, 3.0]
    a0 = float(np.clip(y[-1] + 0.1 * span, lower[0], upper[0]))
    start = [a0, (a0 - float(y[0])) * float(x[0]) ** 0.5, 0.5]
    return _extrapolate(power_law, x, y, start, lower, upper, horizon, fallback)


def signal_values(steps: np.ndarray, values: np.ndarray, k: float, horizon: float
                  ) -> tuple[dict[str, float], dict[str, bool]]:
    """Every signal of one metric's curve read at step k, and whether each forecast fitted."""
    seen = steps <= k
    s, v = steps[seen], values[seen]
    if not len(s):
        return {name: float("nan") for name in SIGNALS}, {name: False for name in FORECASTS}
    area = float(np.trapezoid(v, s) / (s[-1] - s[0])) if len(s) > 1 else float(v[0])
    fits = {"forecast": forecast(s, v, horizon), "powerlaw": power_forecast(s, v, horizon)}
    return {
        "last": float(v[-1]), "mean3": float(v[-3:].mean()), "auc": area, "gain": float(v[-1] - v[0]),
        "slope": float(np.polyfit(s, v, 1)[0]) if len(s) > 1 else float("nan"),
        **{name: value for name, (value, _) in fits.items()},
    }, {name: fitted for name, (_, fitted) in fits.items()}


def target_value(steps: np.ndarray, values: np.ndarray, horizon: float, n: int) -> float:
    return float(values[steps <= horizon][-n:].mean())


def with_budget_unit(groups: dict[str, list[Curve]], definitions: Definitions) -> Definitions:
    """The definitions with the budget unit resolved: rollouts with --rollouts-per-step (every
    curve's rollout counts are then set to N a step, replacing any it carried), else the unit
    asked for (every curve must carry it), else tokens or rollouts when every curve carries them,
    else steps."""
    definitions.check()
    unit, per_step = definitions.budget_unit, definitions.rollouts_per_step
    curves = [c for runs in groups.values() for c in runs]
    if per_step:
        for curve in curves:
            curve.counts["rollouts"] = (curve.eval_steps, curve.eval_steps * per_step)
        return replace(definitions, budget_unit="rollouts")
    if unit is None:
        unit = next((u for u in ("tokens", "rollouts") if all(u in c.counts for c in curves)), "steps")
    lacking = next((c for c in curves if unit != "steps" and unit not in c.counts), None)
    if lacking is not None:
        raise InputError(f"{lacking.source}: run {lacking.run!r} carries no {unit} count (--budget-unit {unit} "
                         f"needs a '{unit}' column or metric)")
    return replace(definitions, budget_unit=unit)


def default_budgets(groups: dict[str, list[Curve]], unit: str = "steps") -> list[int]:
    """The smallest count at a run's first positive eval step, doubling, while before the
    longest horizon (in `unit`)."""
    firsts = [c.count_at(unit, min(s for s in c.eval_steps if s > 0)) for g in groups.values() for c in g
              if (c.eval_steps > 0).any()]
    firsts = [f for f in firsts if f > 0]
    if not firsts:
        return []
    longest = max(min(c.count_at(unit, min(r.last_step for r in g)) for c in g) for g in groups.values())
    budgets, k = [], int(min(firsts))
    while k < longest:
        budgets.append(k)
        k *= 2
    return budgets


# -- the measure ------------------------------------------------------------------------------

@dataclass
class Pair:
    group: str
    better: str  # by the target; the first of the two when they tie
    worse: str
    gap: float
    tie: bool  # below the tie threshold: reported apart


@dataclass
class Row:
    signal: str
    steps: int  # the step the probe reaches (in tokens: the median over the runs)
    budget: int  # in the budget unit
    all: Accuracy
    separable: Accuracy
    exact_ties: int  # pairs with a target gap of 0 at this budget
    target_ties: int  # pairs below the tie threshold at this budget
    forecast_fallbacks: int = 0  # runs × metrics whose fit fell back to the mean of the last 3
    forecast_fits: int = 0  # runs × metrics fitted at this budget

    def to_json(self) -> dict:
        row = {"signal": self.signal, "steps": self.steps, "budget": self.budget,
               "all": {**self.all.to_json(), "target_ties": self.exact_ties},
               "separable": {**self.separable.to_json(), "target_ties": self.target_ties}}
        if self.signal in FORECASTS:
            row.update(forecast_fallbacks=self.forecast_fallbacks, forecast_fits=self.forecast_fits)
        return row


@dataclass
class CurveDecision:
    definitions: Definitions
    groups: dict[str, list[Curve]]
    horizons: dict[str, int]
    targets: dict[str, dict[str, float]]  # group -> run -> target
    pairs: list[Pair]
    rows: list[Row]

    @property
    def unit(self) -> str:
        return self.definitions.budget_unit or "steps"

    def rows_json(self) -> dict:
        """The definitions and one row per signal and budget: what both `validate-probe` modes
        write into decision.json (and what a sweep's `probe.calibration` reads)."""
        return {"definitions": self.definitions.describe(), "rows": [r.to_json() for r in self.rows]}

    def to_json(self) -> dict:
        budgets = sorted({(r.steps, r.budget) for r in self.rows})
        return {
            "pairs": sum(not p.tie for p in self.pairs), "target_ties": sum(p.tie for p in self.pairs),
            **self.rows_json(),
            "groups": {g: {"runs": [c.run for c in runs], "horizon": self.horizons[g], "targets": self.targets[g]}
                       for g, runs in self.groups.items()},
            "pair_list": [asdict(p) for p in self.pairs],
            "budgets": [{"steps": s, self.unit: b} if self.unit != "steps" else {"steps": s} for s, b in budgets],
            "signals": [{"name": name, "definition": text} for name, text in SIGNALS.items()],
        }


def tie_threshold(definitions: Definitions, a: float, b: float) -> float:
    threshold = definitions.min_gap
    if definitions.eval_size:
        pa, pb = np.clip([a, b], 0.0, 1.0)
        threshold = max(threshold, math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / definitions.eval_size))
    return threshold


def measure_curves(groups: dict[str, list[Curve]], definitions: Definitions) -> CurveDecision:
    definitions = with_budget_unit(groups, definitions)
    unit = definitions.budget_unit
    horizons = {g: min(c.last_step for c in runs) for g, runs in groups.items()}
    targets = {g: {c.run: float(np.mean([target_value(s, v, horizons[g], definitions.target_evals)
                                         for s, v in c.metrics.values()])) for c in runs}
               for g, runs in groups.items()}
    pairs = []
    for g, runs in groups.items():
        for i, a in enumerate(runs):
            for b in runs[i + 1:]:
                ta, tb = targets[g][a.run], targets[g][b.run]
                better, worse = (a, b) if ta >= tb else (b, a)
                gap = abs(ta - tb)
                pairs.append(Pair(g, better.run, worse.run, gap, gap < tie_threshold(definitions, ta, tb)))
    rows = []
    for budget in definitions.budgets or default_budgets(groups, unit):
        limits = {(g, c.run): c.step_limit(unit, budget) for g, runs in groups.items() for c in runs}
        active = {g for g, runs in groups.items() if all(limits[(g, c.run)] < horizons[g] for c in runs)}
        reached = [v for (g, _), v in limits.items() if (g in active or not active) and math.isfinite(v)]
        steps = int(budget) if unit == "steps" else int(np.median(reached)) if reached else 0
        in_budget = [p for p in pairs if p.group in active]
        values, fallbacks, fits = _signals_at(groups, active, limits, horizons)
        decided = [p for p in in_budget if p.gap > 0]
        separable = [p for p in decided if not p.tie]
        boot_all = PairBootstrap([p.group for p in decided], definitions.samples, definitions.confidence,
                                 definitions.seed)
        boot_sep = PairBootstrap([p.group for p in separable], definitions.samples, definitions.confidence,
                                 definitions.seed)
        for name in SIGNALS:
            rows.append(Row(name, steps, int(budget), boot_all.accuracy(_outcomes(decided, values[name])),
                            boot_sep.accuracy(_outcomes(separable, values[name])),
                            len(in_budget) - len(decided), len(decided) - len(separable),
                            fallbacks.get(name, 0), fits if name in FORECASTS else 0))
    return CurveDecision(definitions, groups, horizons, targets, pairs, rows)


def _signals_at(groups: dict[str, list[Curve]], active: set[str], limits: dict[tuple[str, str], float],
                horizons: dict[str, int]) -> tuple[dict[str, dict[tuple[str, str], float]], dict[str, int], int]:
    """signal -> (group, run) -> value read at the run's step limit (mean over metrics), each
    forecast's fallbacks and the fits tried (runs × metrics), over the groups in `active`."""
    values: dict[str, dict[tuple[str, str], float]] = {name: {} for name in SIGNALS}
    fallbacks, fits = dict.fromkeys(FORECASTS, 0), 0
    for g in active:
        for curve in groups[g]:
            per_metric = []
            for steps, series in curve.metrics.values():
                read, fitted = signal_values(steps, series, limits[(g, curve.run)], horizons[g])
                per_metric.append(read)
                fits += 1
                for name in FORECASTS:
                    fallbacks[name] += not fitted[name]
            for name in SIGNALS:
                values[name][(g, curve.run)] = float(np.mean([m[name] for m in per_metric]))
    return values, fallbacks, fits


def _outcomes(pairs: list[Pair], values: dict[tuple[str, str], float]) -> np.ndarray:
    """Per pair, the signal's outcome against the target's order (the better run first)."""
    decider = np.array([[values[(p.group, p.better)], values[(p.group, p.worse)]] for p in pairs]).reshape(-1, 2)
    target = np.tile([1.0, 0.0], (len(pairs), 1))
    return pair_outcomes(decider, target, np.array([[0, 1]]))[:, 0] if len(pairs) else np.zeros(0)
