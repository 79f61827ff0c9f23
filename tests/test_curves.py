"""validate-probe --curves (pipelines.curves): readers, definitions and accuracies on curves built
with known answers, and the bad inputs."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.agreement import PairBootstrap
from pipelines.curves import (Definitions, forecast, measure_curves, power_forecast, power_law, read_curves,
                              sigmoid)
from pipelines.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
STEPS = list(range(0, 101, 10))


def write_wandb(path: Path, metric: str, runs: dict[str, dict[int, float | None]], extremes: bool = True) -> Path:
    """A W&B panel export: Step, then per run its column and (as smoothed panels have) __MIN/__MAX
    columns holding values that would flip every order if they were read."""
    steps = sorted({s for curve in runs.values() for s in curve})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["Step"]
        for run in runs:
            header += [f"{run} - {metric}"] + ([f"{run} - {metric}__MIN", f"{run} - {metric}__MAX"] if extremes else [])
        writer.writerow(header)
        for step in steps:
            row: list = [step]
            for i, curve in enumerate(runs.values()):
                value = curve.get(step)
                row.append("" if value is None else f"{value:.6f}")
                if extremes:
                    row += [f"{-9.0 * (i + 1):.1f}", f"{9.0 * (i + 1):.1f}"]
            writer.writerow(row)
    return path


def crossing() -> dict[str, dict[int, float]]:
    """a is flat at 0.5; b rises 0.1 + 0.006 step and passes a at step 66.7. Targets (steps
    60-100): a 0.5, b 0.58."""
    return {"a": {s: 0.5 for s in STEPS}, "b": {s: 0.1 + 0.006 * s for s in STEPS}}


def rows_by(decision) -> dict[tuple[str, int], object]:
    return {(r.signal, r.steps): r for r in decision.rows}


def test_crossing_curves_are_decided_as_defined(tmp_path):
    groups = read_curves([write_wandb(tmp_path / "cross.csv", "acc", crossing())])
    decision = measure_curves(groups, Definitions(budgets=[10, 20, 40, 80], samples=200))
    assert decision.horizons == {"cross": 100}
    assert decision.targets["cross"] == pytest.approx({"a": 0.5, "b": 0.58})
    rows = rows_by(decision)
    expected = {
        # the last eval: a leads until the crossing
        "last": {10: 0, 20: 0, 40: 0, 80: 1},
        # mean of evals 60-80 for b at 80: 0.52 > 0.5; at 40 (20-40): 0.28
        "mean3": {10: 0, 20: 0, 40: 0, 80: 1},
        # b's mean height up to 80 is 0.34
        "auc": {10: 0, 20: 0, 40: 0, 80: 0},
        "gain": {10: 1, 20: 1, 40: 1, 80: 1},
        "slope": {10: 1, 20: 1, 40: 1, 80: 1},
    }
    for signal, by_budget in expected.items():
        for k, right in by_budget.items():
            row = rows[(signal, k)]
            # one pair in one group: every bootstrap draw is that pair
            assert (row.separable.accuracy, row.separable.ci, row.separable.pairs) == (right, (right, right), 1)
            assert row.target_ties == 0 and row.exact_ties == 0


def test_equal_signals_count_one_half(tmp_path):
    runs = {"a": {0: 0.2, 10: 0.3, 100: 0.9}, "b": {0: 0.2, 10: 0.3, 100: 0.4}}
    decision = measure_curves(read_curves([write_wandb(tmp_path / "g.csv", "acc", runs)]),
                              Definitions(budgets=[10], target_evals=1, samples=50))
    rows = rows_by(decision)
    for signal in ("last", "mean3", "auc", "gain", "slope"):
        assert rows[(signal, 10)].separable.accuracy == 0.5


def test_ties_min_gap_and_eval_size(tmp_path):
    # targets (last eval): a 0.50, b 0.50 (gap 0), c 0.53, d 0.65
    runs = {name: {0: 0.1, 10: start, 20: end} for name, start, end in
            (("a", 0.4, 0.5), ("b", 0.3, 0.5), ("c", 0.2, 0.53), ("d", 0.1, 0.65))}
    groups = read_curves([write_wandb(tmp_path / "g.csv", "acc", runs)])
    plain = rows_by(measure_curves(groups, Definitions(budgets=[10], target_evals=1, samples=50)))[("last", 10)]
    # 6 pairs: a~b have gap 0 and are neither right nor wrong; the last eval at 10 orders
    # a > b > c > d, the targets d > c > a, b: only a-b would agree, and it is excluded
    assert (plain.exact_ties, plain.all.pairs, plain.separable.pairs, plain.target_ties) == (1, 5, 5, 0)
    assert plain.all.accuracy == 0.0
    gap = rows_by(measure_curves(groups, Definitions(budgets=[10], target_evals=1, min_gap=0.05, samples=50)))
    row = gap[("last", 10)]
    assert (row.all.pairs, row.separable.pairs, row.target_ties) == (5, 3, 2)  # a-c, b-c below 0.05
    # N = 100 problems: SE of a 0.5 vs 0.65 difference sqrt((.25 + .2275) / 100) = 0.069 < 0.15
    # but 0.5 vs 0.53 (0.071) and 0.53 vs 0.65 (sqrt((.2491 + .2275)/100) = 0.069 > 0.12? no: 0.12 > 0.069)
    se = rows_by(measure_curves(groups, Definitions(budgets=[10], target_evals=1, eval_size=100, samples=50)))
    assert (se[("last", 10)].separable.pairs, se[("last", 10)].target_ties) == (3, 2)
    big = rows_by(measure_curves(groups, Definitions(budgets=[10], target_evals=1, eval_size=10, samples=50)))
    # N = 10: SE ~ 0.22, every gap below it is a tie
    assert (big[("last", 10)].separable.pairs, big[("last", 10)].target_ties) == (0, 5)
    assert np.isnan(big[("last", 10)].separable.accuracy)


def test_pairs_stay_inside_groups_and_the_ci_resamples_groups_then_pairs(tmp_path):
    # group one: one pair the last eval gets right; group two: three pairs it gets wrong
    one = {"a": {0: 0.1, 10: 0.6, 20: 0.6}, "b": {0: 0.1, 10: 0.2, 20: 0.2}}
    two = {"c": {0: 0.1, 10: 0.5, 20: 0.1}, "d": {0: 0.1, 10: 0.4, 20: 0.2}, "e": {0: 0.1, 10: 0.3, 20: 0.3}}
    groups = read_curves([write_wandb(tmp_path / "one.csv", "acc", one), write_wandb(tmp_path / "two.csv", "acc", two)])
    assert sorted(groups) == ["one", "two"]
    decision = measure_curves(groups, Definitions(budgets=[10], target_evals=1, samples=4000))
    assert len(decision.pairs) == 1 + 3
    row = rows_by(decision)[("last", 10)]
    assert row.separable.accuracy == pytest.approx(1 / 4)
    # draws: {one, one} -> 1 (p 1/4), {one, two} -> 1/4 (p 1/2), {two, two} -> 0 (p 1/4)
    assert row.separable.ci == (0.0, 1.0)
    boot = PairBootstrap(["one", "two", "two", "two"], samples=4000)
    values = (boot.weights * np.array([1, 0, 0, 0.])).sum(1) / boot.weights.sum(1)
    assert sorted(np.unique(values)) == [0.0, 0.25, 1.0]
    assert np.mean(values == 1.0) == pytest.approx(0.25, abs=0.03)
    assert boot.weights.sum(1).tolist() == [
        float(sum(1 if g == "one" else 3 for g in picks)) for picks in _picked_groups(boot)]


def _picked_groups(boot: PairBootstrap) -> list[list[str]]:
    # a draw's weight on group one is how often it was picked (its single pair once per pick)
    return [["one"] * int(w[0]) + ["two"] * (2 - int(w[0])) for w in boot.weights]


def test_unequal_horizons_and_missing_cells(tmp_path):
    long = {s: 0.2 + 0.004 * s for s in STEPS}
    short = {s: 0.3 for s in STEPS if s <= 60}
    short[30] = None  # no eval at step 30: an empty cell
    groups = read_curves([write_wandb(tmp_path / "g.csv", "acc", {"long": long, "short": short})])
    decision = measure_curves(groups, Definitions(budgets=[30, 80], samples=50))
    assert decision.horizons == {"g": 60}
    # the long run's target: evals 20..60 (at or before the horizon), 0.2 + 0.004 * 40
    assert decision.targets["g"]["long"] == pytest.approx(0.36)
    rows = rows_by(decision)
    # at 30 the short run's last eval is the one at 20 (0.3) vs long 0.32: right
    assert rows[("last", 30)].separable.accuracy == 1
    # short's mean3 at 30: evals 0, 10, 20 = 0.3; long's 10-30 = 0.28: wrong
    assert rows[("mean3", 30)].separable.accuracy == 0
    # a budget at or past a group's horizon is no probe of it
    assert rows[("last", 80)].all.pairs == 0 and rows[("last", 80)].exact_ties == 0


def test_min_max_columns_are_ignored(tmp_path):
    groups = read_curves([write_wandb(tmp_path / "g.csv", "acc", crossing(), extremes=True)])
    assert set(groups["g"][0].metrics) == {"acc"}
    assert groups["g"][0].metrics["acc"][1].max() <= 1.0


def test_several_metrics_are_averaged_with_equal_weight(tmp_path):
    # at step 10: m1 says a by 0.1, m2 says b by 0.3, so the mean says b; the targets (step 20):
    # m1 a by 0.2, m2 b by 0.1, the mean says a
    m1 = {"a": {0: 0.0, 10: 0.5, 20: 0.6}, "b": {0: 0.0, 10: 0.4, 20: 0.4}}
    m2 = {"a": {0: 0.0, 10: 0.2, 20: 0.4}, "b": {0: 0.0, 10: 0.5, 20: 0.5}}
    files = [write_wandb(tmp_path / "m1.csv", "bench1/acc", m1), write_wandb(tmp_path / "m2.csv", "bench2/acc", m2)]
    groups = read_curves(files)
    assert list(groups) == ["m1"] and set(groups["m1"][0].metrics) == {"bench1/acc", "bench2/acc"}
    decision = measure_curves(groups, Definitions(budgets=[10], target_evals=1, samples=50))
    assert decision.targets["m1"] == pytest.approx({"a": 0.5, "b": 0.45})
    assert rows_by(decision)[("last", 10)].separable.accuracy == 0
    # --metric picks one: bench1 alone orders a first at step 10, as its target does
    only = measure_curves(read_curves(files, metric="bench1"), Definitions(budgets=[10], target_evals=1, samples=50))
    assert rows_by(only)[("last", 10)].separable.accuracy == 1


def test_noisy_curves_match_a_direct_count(tmp_path):
    rng = np.random.default_rng(3)
    files, truth = [], {}
    for g in range(4):
        runs = {f"r{i}": {s: float(np.clip(rng.uniform(0.1, 0.4) + rng.uniform(0, 0.004) * s + rng.normal(0, 0.05), 0, 1))
                          for s in STEPS} for i in range(4)}
        files.append(write_wandb(tmp_path / f"g{g}.csv", "acc", runs))
        truth[f"g{g}"] = runs
    decision = measure_curves(read_curves(files), Definitions(budgets=[20, 50], samples=500))
    for k in (20, 50):
        outcomes = []
        for runs in truth.values():
            target = {r: np.mean([v for s, v in c.items() if s <= 100][-5:]) for r, c in runs.items()}
            last = {r: [v for s, v in sorted(c.items()) if s <= k][-1] for r, c in runs.items()}
            names = sorted(runs)
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    dt, dl = target[a] - target[b], last[a] - last[b]
                    outcomes.append(0.5 if dl == 0 else float(dt * dl > 0))
        row = rows_by(decision)[("last", k)]
        assert row.separable.accuracy == pytest.approx(np.mean(outcomes)) and row.separable.pairs == 24
        assert row.separable.ci[0] <= row.separable.accuracy <= row.separable.ci[1]


def test_forecast_recovers_a_saturating_curve_and_falls_back():
    steps = np.arange(0, 41, 5, dtype=float)
    values = np.where(steps > 0, sigmoid(np.maximum(steps, 1e-9), 0.1, 0.7, 30.0, 1.5), 0.1)
    predicted, fitted = forecast(steps, values, 300.0)
    assert fitted and predicted == pytest.approx(float(sigmoid(np.array([300.0]), 0.1, 0.7, 30.0, 1.5)[0]), abs=1e-3)
    assert forecast(steps[:3], values[:3], 300.0) == (pytest.approx(values[:3].mean()), False)


def test_power_law_recovers_its_asymptote_and_falls_back():
    steps = np.arange(0, 101, 10, dtype=float)
    values = np.where(steps > 0, power_law(np.maximum(steps, 1.0), 0.8, 0.6, 0.5), 0.05)  # step 0 is not fitted
    predicted, fitted = power_forecast(steps, values, 1e12)
    assert fitted and predicted == pytest.approx(0.8, abs=1e-3)  # the asymptote A
    at_horizon, _ = power_forecast(steps, values, 300.0)
    assert at_horizon == pytest.approx(0.8 - 0.6 / 300 ** 0.5, abs=1e-3)
    # two evaluations after step 0 cannot fix three parameters: the mean of the last 3
    assert power_forecast(steps[:3], values[:3], 300.0) == (pytest.approx(values[:3].mean()), False)


def test_power_law_rows_count_their_fallbacks(tmp_path):
    groups = read_curves([write_wandb(tmp_path / "cross.csv", "acc", crossing())])
    rows = rows_by(measure_curves(groups, Definitions(budgets=[20, 40], samples=50)))
    # at step 20 each of the 2 runs has 2 evaluations after step 0: both fall back
    assert (rows[("powerlaw", 20)].forecast_fallbacks, rows[("powerlaw", 20)].forecast_fits) == (2, 2)
    assert rows[("powerlaw", 40)].forecast_fallbacks == 0
    assert rows[("powerlaw", 40)].to_json()["forecast_fits"] == 2


def _long_with_counts(path: Path, tokens_per_step: dict[str, float], column: bool = True) -> Path:
    """Two runs with crossing curves that spend tokens at different rates: per row a `tokens`
    column (or `tokens` rows of their own) with the count consumed by that step."""
    rows = []
    for run, curve in crossing().items():
        for step, value in curve.items():
            count = tokens_per_step[run] * step
            rows.append({"run": run, "step": step, "metric": "acc", "value": value,
                         **({"tokens": count} if column else {})})
            if not column:
                rows.append({"run": run, "step": step, "metric": "tokens", "value": count})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("column", [True, False])
def test_budgets_in_tokens_when_the_curves_carry_them(tmp_path, column):
    # a spends 1000 tokens a step, b 100: a budget of 20000 tokens is step 20 of a and step 200
    # (past the end) of b
    groups = read_curves([_long_with_counts(tmp_path / "t.jsonl", {"a": 1000.0, "b": 100.0}, column)])
    decision = measure_curves(groups, Definitions(budgets=[8000, 20000], samples=50))
    assert decision.unit == "tokens" and decision.definitions.budget_unit == "tokens"
    runs = {c.run: c for c in groups["t"]}
    assert runs["t/a"].step_limit("tokens", 20000) == 20 and runs["t/b"].step_limit("tokens", 20000) == 100
    rows = {(r.signal, r.budget): r for r in decision.rows}
    # at 8000 tokens a is at step 0 (its step-10 count is 10000), b at step 80: b leads, as its target does
    assert rows[("last", 8000)].separable.accuracy == 1.0 and rows[("last", 8000)].separable.pairs == 1
    # 20000 tokens take b to its horizon: no probe shorter than the target, no pair
    assert rows[("last", 20000)].separable.pairs == 0
    # the default budgets double from the smallest count at a first eval (b: 1000 at step 10)
    # while before the horizon's smallest count (b: 10000 at step 100)
    assert [r.budget for r in measure_curves(groups, Definitions(samples=50)).rows if r.signal == "last"] == \
        [1000, 2000, 4000, 8000]
    # the same curves in steps, asked for
    in_steps = measure_curves(groups, Definitions(budgets=[80], samples=50, budget_unit="steps"))
    assert in_steps.unit == "steps" and in_steps.rows[0].steps == 80


def test_a_budget_unit_the_curves_do_not_carry_is_bad_input(tmp_path):
    groups = read_curves([write_wandb(tmp_path / "cross.csv", "acc", crossing())])
    with pytest.raises(InputError, match="cross.csv: run 'a' carries no tokens count"):
        measure_curves(groups, Definitions(budget_unit="tokens"))
    with pytest.raises(InputError, match="--rollouts-per-step counts budgets in rollouts"):
        measure_curves(groups, Definitions(budget_unit="tokens", rollouts_per_step=8))
    assert measure_curves(groups, Definitions(samples=20)).unit == "steps"  # nothing carried: steps


def test_long_tables_with_groups_and_seeds(tmp_path):
    rows = [{"run": r, "step": s, "metric": "acc", "value": v + 0.1 * seed, "group": "g", "seed": seed}
            for r, v0 in (("a", 0.2), ("b", 0.4)) for seed in (0, 1) for s, v in ((0, v0), (10, v0), (20, v0))]
    jsonl = tmp_path / "long.jsonl"
    # a null value is an empty cell: no eval at that step
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows + [{**rows[0], "step": 30, "value": None}]))
    table = tmp_path / "long.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for path in (jsonl, table):
        groups = read_curves([path])
        runs = {c.run: c for c in groups["g"]}
        assert sorted(runs) == ["g/a", "g/b"]
        assert runs["g/a"].metrics["acc"][1].tolist() == pytest.approx([0.25] * 3)  # seeds averaged per step


# -- bad input ----------------------------------------------------------------------------------

def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "validate-probe", *args], cwd=cwd,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "nostep.csv").write_text("Iteration,a - acc,b - acc\n0,0.1,0.2\n")
    write_wandb(tmp / "onerun.csv", "acc", {"a": {0: 0.1, 10: 0.2}})
    write_wandb(tmp / "apart.csv", "acc", {"a": {0: 0.1, 10: 0.2}, "b": {20: 0.1, 30: 0.2}})
    (tmp / "text.csv").write_text("Step,a - acc,b - acc\n0,0.1,0.2\n10,n/a,0.3\n")
    (tmp / "lonely.csv").write_text("run,step,metric,value,group\na,0,acc,0.1,g\na,10,acc,0.2,g\n"
                                    "b,0,acc,0.1,g\nb,10,acc,0.3,g\nc,0,acc,0.1,h\nc,10,acc,0.2,h\n")
    good = write_wandb(tmp / "good.csv", "acc", crossing())
    return {"nostep": (["nostep.csv"], "no Step column"), "onerun": (["onerun.csv"], "has one run"),
            "apart": (["apart.csv"], "no overlapping steps"), "text": (["text.csv"], "non-numeric cell 'n/a'"),
            "lonely": (["lonely.csv"], "group 'h' has one run"),
            "metric": ([good.name, "--metric", "loss"], "--metric loss: matches no metric"),
            "unit": ([good.name, "--budget-unit", "tokens"], "run 'a' carries no tokens count"),
            "badunit": ([good.name, "--budget-unit", "epochs"], "--budget-unit epochs: not one of steps")}


@pytest.mark.parametrize("case", ["nostep", "onerun", "apart", "text", "lonely", "metric", "unit", "badunit"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    args, message = _bad_inputs(tmp_path)[case]
    result = _cli("--curves", *args, "--out", "out", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert (args[0] in lines[0]) or case in ("metric", "badunit")
    assert not (tmp_path / "out").exists()


def test_the_command_end_to_end_on_generated_exports(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "dev" / "example_curves.py"), str(tmp_path / "exports"),
                    "--groups", "3", "--steps", "200"], check=True)
    result = _cli("--curves", *sorted(str(p) for p in (tmp_path / "exports").glob("*.csv")), "--out", "out",
                  "--samples", "300", "--rollouts-per-step", "64", "--eval-size", "500", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "decision accuracy by signal and budget (3 groups, 18 pairs)" in result.stdout
    saved = json.loads((tmp_path / "out" / "decision.json").read_text())
    assert {"pairs", "target_ties", "budgets", "signals", "definitions", "rows"} <= set(saved)
    assert saved["pairs"] + saved["target_ties"] == 18
    assert [b["rollouts"] for b in saved["budgets"]] == [640, 1280, 2560, 5120, 10240]
    assert {r["signal"] for r in saved["rows"]} == {"last", "mean3", "auc", "gain", "slope", "forecast", "powerlaw"}
    assert len(saved["rows"]) == 7 * 5
    assert saved["definitions"]["target_evals"] == 5 and saved["definitions"]["eval_size"] == 500
    page = (tmp_path / "out" / "decision.html").read_text()
    assert page.count("data:image/png;base64,") == 1 + 3  # accuracy against budget, each group's curves


# -- a workspace mid-sweep --------------------------------------------------------------------

def _probe_workspace(tmp: Path, finished: dict[tuple[str, int], list[float]], unfinished: dict[tuple[str, int], str]
                     ) -> Path:
    """A workspace whose sweep 's' has its probes and a validate-probe target 's--target': the
    target's `finished` runs have published their eval rollouts (evals every 10 steps), the
    `unfinished` ones only an index status (running, pending)."""
    from pipelines.store import RunStore

    store = RunStore(tmp / "ws")
    runs = [("s", recipe, seed, None) for recipe in ("a", "b") for seed in (0,)] + \
        [("s--target", recipe, seed, status) for (recipe, seed), status in unfinished.items()] + \
        [("s--target", recipe, seed, "done") for recipe, seed in finished]
    with store._db() as db:
        for sweep, recipe, seed, status in runs:
            key = f"{sweep}-{recipe}-{seed}"
            db.execute("INSERT INTO runs(stage, key, status) VALUES ('probe', ?, ?)", (key, status or "done"))
            db.execute("INSERT INTO sweep_members VALUES (?, 'probe', ?, ?)",
                       (sweep, key, json.dumps({"kind": "probe", "recipe": recipe, "seed": seed})))
            accuracy = finished.get((recipe, seed), [0.1, 0.2]) if status in (None, "done") else None
            if accuracy is None:
                continue
            run_dir = tmp / "ws" / "probe" / key
            (run_dir / "rollouts").mkdir(parents=True)
            (run_dir / "manifest.json").write_text(json.dumps({"config": {"spec_hash": "h"}}))
            for i, acc in enumerate(accuracy):
                (run_dir / "rollouts" / f"step_{10 * i:04d}.jsonl").write_text(
                    "".join(json.dumps({"id": f"p{p}", "acc": float(p < acc * 10)}) + "\n" for p in range(10)))
    return tmp / "ws"


def test_a_workspace_mid_sweep_reads_its_finished_runs_and_says_which_not(tmp_path):
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    workspace = _probe_workspace(tmp_path, {("a", 1000): rising, ("b", 1000): [0.5] * 8, ("c", 1000): [0.3] * 8},
                                 {("c", 1001): "running", ("b", 1001): "pending"})
    result = _cli("--curves", str(workspace), "--workspace-sweep", "s", "--out", "out", "--samples", "50",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "sweep 's--target': 2 probe run(s) not finished and not read" in notes[0]
    assert "b seed 1001 (pending); c seed 1001 (running)" in notes[0] and "read 3 finished" in notes[0]
    saved = json.loads((tmp_path / "out" / "decision.json").read_text())
    assert saved["groups"]["s--target"]["runs"] == ["a", "b", "c"]
    assert saved["groups"]["s--target"]["targets"] == pytest.approx({"a": 0.6, "b": 0.5, "c": 0.3})


def test_a_workspace_sweep_with_one_finished_recipe_is_one_line(tmp_path):
    workspace = _probe_workspace(tmp_path, {("a", 1000): [0.1, 0.2]}, {("b", 1000): "running"})
    result = _cli("--curves", str(workspace), "--workspace-sweep", "s", "--out", "out", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sweep 's--target': 1 recipe(s) with a finished probe run; pairs need two" in lines[0]
    assert "(1 probe run(s) not finished)" in lines[0] and not (tmp_path / "out").exists()
