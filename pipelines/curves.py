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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipelines.agreement import Accuracy, PairBootstrap, pair_outcomes
from pipelines.errors import InputError

STEP_COLUMNS = ("Step", "step", "_step")
IGNORED_SUFFIXES = ("__MIN", "__MAX")
LONG_COLUMNS = ("run", "step", "metric", "value")


@dataclass
class Curve:
    """One run's evaluation curves: metric -> (steps, values), steps increasing."""

    run: str
    group: str
    source: str
    metrics: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def last_step(self) -> int:
        return int(min(steps[-1] for steps, _ in self.metrics.values()))


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
        curve.metrics[metric] = _series(by_step)
    return list(curves.values())


def read_long(path: Path) -> list[Curve]:
    """A long table (CSV or JSONL): run, step, metric, value; optional group (default: the file's
    name) and seed (runs of one name and group with several seeds are averaged per step)."""
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
    return _curves(points, groups, path)


def read_workspace(workspace: Path, sweep: str | None = None) -> list[Curve]:
    """A midprobe workspace's probe runs: each recipe's held-out accuracy curve, its seeds
    averaged per step; one group per sweep. A sweep that `validate-probe` gave long target runs
    (`<sweep>--target`) is read from those: they are the long runs whose ends the early steps
    should foretell."""
    from pipelines.decision import TARGET_SUFFIX
    from pipelines.results import collect
    from pipelines.store import RunStore

    store = RunStore(workspace)
    names = sorted({row["sweep"] for row in store.query("SELECT DISTINCT sweep FROM sweep_members")})
    if sweep is not None and sweep not in names:
        raise InputError(f"{workspace}: no sweep '{sweep}' (sweeps: {', '.join(names) or 'none'})")
    wanted = [sweep] if sweep is not None else [n for n in names if not n.endswith(TARGET_SUFFIX)]
    chosen = [n + TARGET_SUFFIX if n + TARGET_SUFFIX in names else n for n in wanted]
    curves = []
    for name in chosen:
        results = collect(store, name)
        points: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for run in results.probes:
            for step, value in zip(run.eval_steps, run.accuracy):
                points[(run.recipe, "held-out accuracy")][int(step)].append(float(value))
        curves += _curves(points, {recipe: name for recipe, _ in points}, workspace / name)
    return curves


def read_curves(paths: list[Path], metric: str | None = None, sweep: str | None = None) -> dict[str, list[Curve]]:
    """Every path's curves by group, checked: a group of at least two runs that share metrics and
    overlap in steps. Errors name the file and what is wrong."""
    curves: list[Curve] = []
    for path in _expand(paths):
        if path.is_dir():
            curves += read_workspace(path, sweep)
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
    budgets: list[int] | None = None  # in steps; None: doubling from the first eval step
    samples: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def describe(self) -> dict:
        unit = f"rollouts ({self.rollouts_per_step} a step)" if self.rollouts_per_step else "RL steps"
        tie = f"target gap below {self.min_gap:g}"
        if self.eval_size:
            tie += (f" or below the binomial standard error of the difference of two {self.eval_size}-problem "
                    "accuracies, sqrt(pa(1-pa)/N + pb(1-pb)/N)")
        return {
            **asdict(self),
            "horizon": "the last step of the group's shortest run",
            "target": f"mean of the run's last {self.target_evals} evaluations at or before the horizon",
            "budget": f"a probe of budget k sees the evaluations at or before step k; budgets in {unit}; "
                      "a group counts at budget k only when k is before its horizon",
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


SIGNALS = {
    "last": "the last evaluation at or before k",
    "mean3": "the mean of the last 3 evaluations at or before k",
    "auc": "area under the curve from the first evaluation to the last at or before k (trapezoids), "
           "divided by that span: the curve's mean height",
    "gain": "the last evaluation at or before k minus the first (step 0)",
    "slope": "least-squares slope over the evaluations at or before k",
    "forecast": "ScaleRL's saturating fit R(C) = R0 + (A - R0) / (1 + (Cmid/C)^B), R0 the first "
                "evaluation, fitted (bounded) to the evaluations at or before k and read at the horizon; "
                "with fewer than 3 evaluations after the first, or a failed fit, the mean of the last 3",
}


def sigmoid(c: np.ndarray, r0: float, a: float, c_mid: float, b: float) -> np.ndarray:
    return r0 + (a - r0) / (1 + (c_mid / c) ** b)


def forecast(steps: np.ndarray, values: np.ndarray, horizon: float) -> tuple[float, bool]:
    """The saturating fit read at `horizon`, and whether it fitted (False: the fallback)."""
    from scipy.optimize import curve_fit

    fallback = float(values[-3:].mean())
    later = steps > steps[0]
    if later.sum() < 3:
        return fallback, False
    r0, x, y = float(values[0]), steps[later], values[later]
    span = max(float(np.ptp(values)), 1e-6)
    lower, upper = [float(values.min()) - span, 1e-3 * x[0], 0.1], [float(values.max()) + span, 10 * horizon, 5.0]
    start = [float(np.clip(y[-1], lower[0], upper[0])), float(np.clip(np.median(x), lower[1], upper[1])), 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (a, c_mid, b), _ = curve_fit(lambda c, a, c_mid, b: sigmoid(c, r0, a, c_mid, b), x, y, p0=start,
                                         bounds=(lower, upper), maxfev=2000)
    except (RuntimeError, ValueError):
        return fallback, False
    value = float(sigmoid(np.array([horizon], dtype=float), r0, a, c_mid, b)[0])
    return (value, True) if math.isfinite(value) else (fallback, False)


def signal_values(steps: np.ndarray, values: np.ndarray, k: float, horizon: float) -> tuple[dict[str, float], bool]:
    """Every signal of one metric's curve read at budget k, and whether the forecast fitted."""
    seen = steps <= k
    s, v = steps[seen], values[seen]
    if not len(s):
        return {name: float("nan") for name in SIGNALS}, False
    area = float(np.trapezoid(v, s) / (s[-1] - s[0])) if len(s) > 1 else float(v[0])
    predicted, fitted = forecast(s, v, horizon)
    return {
        "last": float(v[-1]), "mean3": float(v[-3:].mean()), "auc": area, "gain": float(v[-1] - v[0]),
        "slope": float(np.polyfit(s, v, 1)[0]) if len(s) > 1 else float("nan"), "forecast": predicted,
    }, fitted


def target_value(steps: np.ndarray, values: np.ndarray, horizon: float, n: int) -> float:
    return float(values[steps <= horizon][-n:].mean())


def default_budgets(groups: dict[str, list[Curve]]) -> list[int]:
    """The first positive eval step, doubling, while before the longest horizon."""
    firsts = [s for g in groups.values() for c in g for steps, _ in c.metrics.values() for s in steps if s > 0]
    longest = max(min(c.last_step for c in g) for g in groups.values())
    if not firsts:
        return []
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
    steps: int
    budget: int  # in the budget unit (steps or rollouts)
    all: Accuracy
    separable: Accuracy
    exact_ties: int  # pairs with a target gap of 0 at this budget
    target_ties: int  # pairs below the tie threshold at this budget
    forecast_fallbacks: int = 0  # runs × metrics whose forecast fell back to the mean of the last 3
    forecast_fits: int = 0  # runs × metrics forecast at this budget

    def to_json(self) -> dict:
        row = {"signal": self.signal, "steps": self.steps, "budget": self.budget,
               "all": {**self.all.to_json(), "target_ties": self.exact_ties},
               "separable": {**self.separable.to_json(), "target_ties": self.target_ties}}
        if self.signal == "forecast":
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
        return "rollouts" if self.definitions.rollouts_per_step else "steps"

    def to_json(self) -> dict:
        budgets = sorted({(r.steps, r.budget) for r in self.rows})
        return {
            "pairs": sum(not p.tie for p in self.pairs), "target_ties": sum(p.tie for p in self.pairs),
            "definitions": self.definitions.describe(),
            "groups": {g: {"runs": [c.run for c in runs], "horizon": self.horizons[g], "targets": self.targets[g]}
                       for g, runs in self.groups.items()},
            "pair_list": [asdict(p) for p in self.pairs],
            "budgets": [{"steps": s, self.unit: b} if self.unit != "steps" else {"steps": s} for s, b in budgets],
            "signals": [{"name": name, "definition": text} for name, text in SIGNALS.items()],
            "rows": [r.to_json() for r in self.rows],
        }


def tie_threshold(definitions: Definitions, a: float, b: float) -> float:
    threshold = definitions.min_gap
    if definitions.eval_size:
        pa, pb = np.clip([a, b], 0.0, 1.0)
        threshold = max(threshold, math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / definitions.eval_size))
    return threshold


def measure_curves(groups: dict[str, list[Curve]], definitions: Definitions) -> CurveDecision:
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
    per_step = definitions.rollouts_per_step or 1
    steps_list = ([math.ceil(b / per_step) for b in definitions.budgets] if definitions.budgets
                  else default_budgets(groups))
    rows = []
    for k in steps_list:
        in_budget = [p for p in pairs if k < horizons[p.group]]
        values, fallbacks, fits = _signals_at(groups, k, horizons)
        decided = [p for p in in_budget if p.gap > 0]
        separable = [p for p in decided if not p.tie]
        boot_all = PairBootstrap([p.group for p in decided], definitions.samples, definitions.confidence,
                                 definitions.seed)
        boot_sep = PairBootstrap([p.group for p in separable], definitions.samples, definitions.confidence,
                                 definitions.seed)
        for name in SIGNALS:
            rows.append(Row(name, k, k * per_step, boot_all.accuracy(_outcomes(decided, values[name])),
                            boot_sep.accuracy(_outcomes(separable, values[name])),
                            len(in_budget) - len(decided), len(decided) - len(separable),
                            *((fallbacks, fits) if name == "forecast" else (0, 0))))
    return CurveDecision(definitions, groups, horizons, targets, pairs, rows)


def _signals_at(groups: dict[str, list[Curve]], k: int, horizons: dict[str, int]
                ) -> tuple[dict[str, dict[tuple[str, str], float]], int, int]:
    """signal -> (group, run) -> value at budget k (mean over metrics), the forecast's fallbacks
    and its fits (runs × metrics)."""
    values: dict[str, dict[tuple[str, str], float]] = {name: {} for name in SIGNALS}
    fallbacks = fits = 0
    for g, runs in groups.items():
        if k >= horizons[g]:
            continue
        for curve in runs:
            per_metric = []
            for steps, series in curve.metrics.values():
                read, fitted = signal_values(steps, series, k, horizons[g])
                per_metric.append(read)
                fallbacks += not fitted
                fits += 1
            for name in SIGNALS:
                values[name][(g, curve.run)] = float(np.mean([m[name] for m in per_metric]))
    return values, fallbacks, fits


def _outcomes(pairs: list[Pair], values: dict[tuple[str, str], float]) -> np.ndarray:
    """Per pair, the signal's outcome against the target's order (the better run first)."""
    decider = np.array([[values[(p.group, p.better)], values[(p.group, p.worse)]] for p in pairs]).reshape(-1, 2)
    target = np.tile([1.0, 0.0], (len(pairs), 1))
    return pair_outcomes(decider, target, np.array([[0, 1]]))[:, 0] if len(pairs) else np.zeros(0)
