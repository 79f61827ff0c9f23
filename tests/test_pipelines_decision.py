"""Decision accuracy (pipelines.decision) on constructed rankings with known answers, and the
validation sweep's stage sharing with the demo sweep."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.agreement import agreement
from pipelines.curves import SIGNALS, Definitions, measure_curves, read_curves
from pipelines.decision import (
    budget_problems, budget_steps, decide, entropy_fit_ceiling, first_replica, held_out, save,
    split_pairs, target_plan)
from pipelines.errors import InputError
from pipelines.plan import build_plan
from pipelines.ranking import ProbeRun, rank
from pipelines.results import StageInfo, SweepResults
from pipelines.stages import STAGES, StageContext
from pipelines.sweep import bundled_sweep
from pipelines.preflight import load_sweep

EVAL_STEPS = list(range(0, 45, 5))  # a 40-step probe evaluating every 5 steps
N_PROBLEMS = 64


def _run(recipe: str, seed: int, acc_by_eval: list[float], spec: str = "probe", **metrics) -> ProbeRun:
    # the same mean correctness on every problem: resampling problems leaves the score exact,
    # so every accuracy below is known by hand and its CI collapses where seeds agree
    correct = np.repeat(np.array(acc_by_eval, dtype=float)[:, None], N_PROBLEMS, axis=1)
    steps = EVAL_STEPS[:len(acc_by_eval)]
    return ProbeRun(recipe, seed, f"{spec}-{recipe}-{seed}", spec, steps, correct,
                    [f"p{i}" for i in range(N_PROBLEMS)], metrics=metrics, cpu_seconds=200.0)


def test_agreement_counts_pairs_and_ties_by_hand():
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    assert agreement(np.array([3, 2, 1.]), np.array([30, 20, 10.]), pairs) == 1.0
    assert agreement(np.array([3, 2, 1.]), np.array([10, 20, 30.]), pairs) == 0.0
    assert agreement(np.array([1, 2, 3.]), np.array([2, 1, 3.]), pairs) == pytest.approx(2 / 3)
    assert agreement(np.array([1, 1, 0.]), np.array([3, 2, 1.]), pairs) == pytest.approx((0.5 + 1 + 1) / 3)
    batched = agreement(np.array([[3, 2, 1.], [1, 2, 3.]]), np.array([3, 2, 1.]), pairs)
    assert batched.tolist() == [1.0, 0.0]
    assert np.isnan(agreement(np.array([1, 2.]), np.array([1, 2.]), np.zeros((0, 2), dtype=int)))


def test_target_ties_are_split_off():
    runs = [_run(r, s, [0.1] + [acc] * 8, spec="target")
            for r, acc in (("a", 0.8), ("b", 0.6), ("c", 0.6), ("d", 0.2)) for s in (1000, 1001)]
    separated, ties = split_pairs(rank(runs, samples=200))
    assert sorted(separated) == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")]
    assert [tuple(sorted(t)) for t in ties] == [("b", "c")]


def test_budgets_follow_eval_steps_and_problem_halvings():
    assert budget_steps(EVAL_STEPS) == [5, 10, 20, 40]
    assert budget_steps([0, 2, 4]) == [2, 4]
    assert budget_steps([0, 40, 80, 120]) == [40, 80, 120]
    assert budget_problems(128) == [16, 32, 64, 128]
    assert budget_problems(3) == [1, 3]


def test_entropy_fit_recovers_the_ceiling():
    h = np.array([1.2, 0.9, 0.6, 0.4, 0.3])
    assert entropy_fit_ceiling(h, -2 * np.exp(h) + 3) == pytest.approx(1.0)
    assert entropy_fit_ceiling(np.full(3, 0.5), np.array([0.2, 0.4, 0.6])) == pytest.approx(0.4)


def _stage(tmp: Path, name: str, data: dict, metrics=None, role=None) -> StageInfo:
    path = tmp / name
    path.mkdir()
    (path / "summary.json").write_text(json.dumps(data))
    return StageInfo("probe", name, role or {}, path, {}, metrics or {})


# Probe curves (acc at evals 0, 5, ..., 40) and the long-run target's scores. The target orders
# a > b ~ c > d (b and c tie). d starts fast and collapses: it wins 5-step probes only.
PROBE = {"a": [0.1] + [0.7] * 8, "b": [0.1] + [0.5] * 8, "c": [0.1] + [0.4] * 8,
         "d": [0.1, 0.9] + [0.0] * 7}
TARGET = {"a": 0.8, "b": 0.6, "c": 0.6, "d": 0.2}
TIMINGS = {"total_s": 100.0, "profile_s": 10.0, "eval_s": 18.0}  # 2 s an eval; 40 steps of 1.8 s


def _decision(tmp_path, samples=400, target=None, definitions=None):
    probes, info, midtrain = [], {}, []
    for i, (recipe, curve) in enumerate(PROBE.items()):
        for seed in (0, 1, 2):
            # c's seed 2 scores 0.8: a one-seed probe on seed 2 orders c above a
            acc = [0.1] + [0.8] * 8 if (recipe, seed) == ("c", 2) else curve
            target_rank = list(TARGET).index(recipe)
            run = _run(recipe, seed, acc, **{
                "timing_s/step": [(s, 1.8) for s in range(1, 41)],
                "actor/entropy": [(s, 2.0 - 0.3 * target_rank - 0.01 * s) for s in range(1, 41)],
                # reward slopes a 0.03 > b 0.02 > c 0.01 per step, d 0.1: the fastest riser collapses
                "critic/score/mean": [(s, (0.1 if recipe == "d" else 0.03 - 0.01 * target_rank) * s)
                                      for s in range(1, 41)]})
            run.profile = {"pass_at_k": {"1": TARGET[recipe] + 0.01 * i, "8": 1 - TARGET[recipe]},
                           "fewshot": {"acc": 0.3}}
            probes.append(run)
            info[run.key] = _stage(tmp_path, run.key, {"timings": TIMINGS})
        midtrain.append(StageInfo("midtrain", f"m{recipe}", {"recipes": [recipe]}, tmp_path, {},
                                  {"val/mathweb/loss": [(100, 2.0 + target_rank)],
                                   f"val/{recipe}/loss": [(100, 9.0 - target_rank)]}))
    target = target or [_run(r, s, [0.1] + [acc] * 8, spec="target") for r, acc in TARGET.items() for s in (1000, 1001)]
    results = SweepResults("constructed", probes, info, {}, midtrain, None)
    return decide(results, target, "auc_acc", samples=samples, definitions=definitions)


def test_decision_accuracy_on_constructed_rankings(tmp_path):
    decision = _decision(tmp_path)
    assert len(decision.separated) == 5 and [tuple(sorted(t)) for t in decision.ties] == [("b", "c")]
    budgets = {(b.steps, b.seeds, b.eval_problems): b for b in decision.budgets}
    assert sorted({k[0] for k in budgets}) == [5, 10, 20, 40] and sorted({k[1] for k in budgets}) == [1, 2, 3]
    assert sorted({k[2] for k in budgets}) == [8, 16, 32, 64]
    # 5 steps: d (0.9) beats everyone and c's mean (0.53) loses to it: only a > b, a > c hold
    assert budgets[(5, 3, 64)].accuracy == pytest.approx(2 / 5)
    # the CI resamples the 5 pairs (outcomes 1, 1, 0, 0, 0): P(all five 0) = 0.6^5 = 0.08 > 0.025,
    # P(five 1s) = 0.4^5 = 0.01 < 0.025 < P(at least four 1s) = 0.09
    assert budgets[(5, 3, 64)].ci == (0.0, 0.8)
    # 40 steps: d's area is 0.9 / 8, every separated pair is right with all seeds...
    assert budgets[(40, 3, 64)].accuracy == 1.0
    # ...with one seed, the mean over seeds {0}, {1}, {2}: seed 2 gets a > c wrong
    assert budgets[(40, 1, 64)].accuracy == pytest.approx((1 + 1 + 4 / 5) / 3)
    # a draw is wrong on every copy of (a, c) when it draws seed 2 (1/3): P(<= 0.4) = 1/3 *
    # P(3+ copies of 5) = 0.019 < 0.025 < P(<= 0.6) = 1/3 * P(2+ copies) = 0.088
    assert budgets[(40, 1, 64)].ci == pytest.approx((0.6, 1.0))
    assert budgets[(40, 2, 64)].accuracy == 1.0
    for budget in decision.budgets:  # one computation: the interval holds its point
        assert budget.ci[0] <= budget.accuracy <= budget.ci[1]
    # every problem scores the same, so a subset of them decides the same
    assert budgets[(40, 3, 8)].accuracy == 1.0 and budgets[(5, 3, 16)].accuracy == pytest.approx(2 / 5)
    assert decision.disagreements == [] and decision.full_probe is budgets[(40, 3, 64)]
    assert decision.best_budget().accuracy == 1.0 and decision.best_budget().cpu_hours == min(
        b.cpu_hours for b in decision.budgets if b.accuracy == 1.0)
    assert decision.cheapest(0.9) is min((b for b in decision.budgets if b.accuracy >= 0.9),
                                         key=lambda b: b.cpu_hours)
    # CPU time: 2 CPU-s per wall-s (200 CPU-s over a 100 s run); 4 recipes x 3 seeds runs
    per_run = {(5, 64): 2 * (10 + 5 * 1.8 + 2 * 2), (40, 64): 200.0, (40, 32): 2 * (10 + 72 + 9 * 2 / 2)}
    for (steps, m), seconds in per_run.items():
        assert budgets[(steps, 3, m)].cpu_hours == pytest.approx(12 * seconds / 3600)
        assert budgets[(steps, 1, m)].cpu_hours == pytest.approx(4 * seconds / 3600)


def test_cheap_signals_decide_by_hand(tmp_path):
    signals = {s.name: s for s in _decision(tmp_path).signals}
    assert signals["step-0 pass@1"].accuracy == 1.0  # ordered like the target
    assert signals["step-0 pass@8"].accuracy == 0.0  # ordered the other way
    assert signals["few-shot accuracy"].accuracy == 0.5  # a tie on every pair
    assert signals["−validation loss"].accuracy == 1.0  # on mathweb, the corpus every recipe validated on
    assert signals["step-0 policy entropy"].accuracy == 1.0
    assert signals["reward slope, steps 1–10"].accuracy == pytest.approx(2 / 5)  # d's reward rises fastest
    assert signals["step-0 held-out accuracy"].accuracy == 0.5
    fit = signals["entropy fit −a·e^H+b at H=0, steps 0–20"]
    assert 0 <= fit.accuracy <= 1 and fit.ci[0] <= fit.ci[1]
    assert signals["−validation loss"].cpu_hours == 0
    assert signals["step-0 pass@1"].cpu_hours == pytest.approx(12 * 2 * 10 / 3600)  # the profile


def test_accuracy_and_its_ci_judge_against_one_target_order(tmp_path):
    """A signal that orders the recipes exactly as the target's point scores decides every
    separated pair right: 1.0 with an interval of [1, 1], however noisy the target's own
    bootstrap replicates (which decide which pairs count, not how a decider scores)."""
    rng = np.random.default_rng(0)
    means = {recipe: 0.9 - 0.08 * i for i, recipe in enumerate("abcdef")}  # some pairs barely separated
    target = []
    for recipe, p in means.items():
        for seed in (1000, 1001):
            correct = (rng.random((9, N_PROBLEMS)) < np.linspace(0.1, p, 9)[:, None]).astype(float)
            target.append(ProbeRun(recipe, seed, f"target-{recipe}-{seed}", "target", EVAL_STEPS, correct,
                                   [f"p{i}" for i in range(N_PROBLEMS)], cpu_seconds=1.0))
    order = rank(target, samples=400, seed=1)
    point = {r.recipe: r.score for r in order.recipes}
    probes, info = [], {}
    for recipe in means:
        for seed in (0, 1):
            run = _run(recipe, seed, PROBE["a"], **{"timing_s/step": [(s, 1.0) for s in range(1, 41)]})
            run.profile = {"pass_at_k": {"1": point[recipe]}}
            probes.append(run)
            info[run.key] = _stage(tmp_path, run.key, {"timings": TIMINGS})
    decision = decide(SweepResults("noisy", probes, info, {}, [], None), target, "auc_acc", samples=400)
    assert len(decision.separated) >= 8
    signal = next(s for s in decision.signals if s.name == "step-0 pass@1")
    assert (signal.accuracy, signal.ci) == (1.0, (1.0, 1.0))


def test_decision_json_has_the_documented_fields(tmp_path):
    path = tmp_path / "reports" / "decision.json"
    save(_decision(tmp_path, samples=200), path)
    saved = json.loads(path.read_text())
    assert saved["pairs"] == 5 and saved["target_ties"] == 1
    budget = saved["budgets"][0]
    assert set(budget) == {"steps", "seeds", "eval_problems", "cpu_hours", "accuracy", "ci"}
    assert {"name", "accuracy", "ci", "cpu_hours"} == set(saved["signals"][0])


def test_decision_json_has_the_curves_definitions_and_rows(tmp_path):
    path = tmp_path / "reports" / "decision.json"
    save(_decision(tmp_path, samples=200), path)
    saved = json.loads(path.read_text())
    # the target runs' curves (evals every 5 steps to 40) read at budgets 5, 10, 20
    assert saved["definitions"]["target_evals"] == 5 and saved["definitions"]["budget_unit"] == "steps"
    assert [(r["signal"], r["budget"]) for r in saved["rows"]] == [
        (name, k) for k in (5, 10, 20) for name in SIGNALS]
    last = next(r for r in saved["rows"] if (r["signal"], r["budget"]) == ("last", 5))
    # each target run is flat after step 0: its step-5 value orders the 5 pairs its end orders;
    # b and c end equal (a target gap of 0)
    assert last["all"] == {"accuracy": 1.0, "ci": [1.0, 1.0], "pairs": 5, "target_ties": 1}
    assert "forecast_fallbacks" in next(r for r in saved["rows"] if r["signal"] == "powerlaw")
    # the sweep's own keys stay as they were
    assert saved["pairs"] == 5 and {"steps", "seeds", "eval_problems"} <= set(saved["budgets"][0])


def test_the_sweep_rows_are_what_curves_mode_reads_from_the_same_curves(tmp_path):
    definitions = Definitions(budgets=[5, 15], target_evals=3, min_gap=0.1, samples=100)
    # seeds that differ, and curves that sink or rise after their start: rows that depend on the budget
    target = [_run(r, s, [0.1] + [acc + (0.03 if r == "d" else -0.02) * i + 0.01 * (s - 1000) for i in range(8)],
                   spec="target") for r, acc in TARGET.items() for s in (1000, 1001)]
    swept = _decision(tmp_path, samples=100, target=target, definitions=definitions)
    table = tmp_path / "target.csv"
    with table.open("w") as handle:
        handle.write("run,step,metric,value,group\n")
        for run in target:
            for step, acc in zip(run.eval_steps, run.accuracy):
                handle.write(f"{run.recipe},{step},acc,{acc},g\n")
    from_curves = measure_curves(read_curves([table]), definitions)
    assert swept.to_json()["rows"] == [r.to_json() for r in from_curves.rows]
    assert swept.to_json()["definitions"] == from_curves.definitions.describe()
    assert [r["budget"] for r in swept.to_json()["rows"] if r["signal"] == "last"] == [5, 15]


def test_validation_sweep_reuses_the_demo_stages():
    toy_path, validation_path = bundled_sweep("toy"), bundled_sweep("toy-validation")
    toy = build_plan(load_sweep(toy_path), toy_path)
    validation = build_plan(load_sweep(validation_path), validation_path)
    assert len(validation.midtrain) >= 8 and len(load_sweep(validation_path).probe.seeds) >= 3
    assert validation.base.key == toy.base.key and validation.problems.key == toy.problems.key
    # one mid-training run per recipe (replica None) in both sweeps
    stables = {r[None][0].key for r in [*toy.midtrain.values(), *validation.midtrain.values()]}
    assert len(stables) == 1  # one shared stable stage
    for recipe, replicas in toy.midtrain.items():  # the demo's four decay branches, by the same names
        assert validation.midtrain[recipe][None][-1].key == replicas[None][-1].key
    assert {run.key for run in toy.probes.values()} <= {run.key for run in validation.probes.values()}
    decays = {r[None][-1].key for r in validation.midtrain.values()}
    assert len(decays) == len(validation.midtrain)  # every recipe its own branch


def test_target_seeds_must_not_be_probe_seeds():
    path = bundled_sweep("toy-validation")
    with pytest.raises(InputError, match="--target-seeds: seed 1 is also a probe seed"):
        target_plan(load_sweep(path), path, 8, [1000, 1])


def test_target_evaluates_on_its_own_problems(tmp_path):
    path = bundled_sweep("toy-validation")
    sweep = load_sweep(path)
    probe_plan, target = target_plan(sweep, path, 8, [1000, 1001])
    assert len(target.probes) == 2 * len(probe_plan.midtrain)
    spec = next(iter(target.probes.values())).config.spec
    assert spec.steps == 8 * 40 and spec.eval_every == 8 * 5
    # the same difficulty control and RL problems; a disjoint eval pool
    assert target.problems.config == probe_plan.problems.config
    assert target.problems.inputs["checkpoint"].key == probe_plan.problems.inputs["checkpoint"].key
    pools = {}
    for name, plan in (("probe", probe_plan), ("target", target)):
        pool = plan.problems.inputs["pool"]
        out = tmp_path / name
        out.mkdir()
        STAGES["problems"](pool, {}, out, StageContext(on_metrics=lambda step, metrics: None))
        pools[name] = {split: [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
                       for split in ("train", "eval")}
    assert pools["probe"]["train"] == pools["target"]["train"]
    probe_eval, target_eval = ({p["id"] for p in pools[n]["eval"]} for n in ("probe", "target"))
    assert len(target_eval) == len(probe_eval) and not probe_eval & target_eval
    levels = lambda n: sorted({p["difficulty"] for p in pools[n]["eval"]})  # noqa: E731
    assert levels("probe") == levels("target")


def test_a_file_eval_set_needs_a_target_eval_set(tmp_path):
    from pipelines.errors import InputError
    from data_recipes.toyworld import ToyWorldConfig
    from pipelines.run_configs import ProblemSource, ProblemsRun
    from pipelines.store import StageRun

    file_set = ProblemSource(path="/x/eval.jsonl", fingerprint="0")
    problems = StageRun("problems", ProblemsRun(toy_world=ToyWorldConfig(), train_set=file_set, eval_set=file_set))
    with pytest.raises(InputError, match="--target-eval-set"):
        held_out(problems, None)
    mine = tmp_path / "held_out.jsonl"
    mine.write_text('{"id": "1", "question": "q", "answer": "1"}\n')
    assert held_out(problems, mine).config.eval_set.path == str(mine)


def test_report_section_has_the_table_and_the_plot(tmp_path):
    from pipelines.report import Doc, _decision_section, to_markdown

    decision = _decision(tmp_path, samples=200)
    doc = Doc()
    _decision_section(doc, decision)
    md = to_markdown(doc, "figures")
    assert "## Decision accuracy" in md and "b ~ c" in md or "c ~ b" in md
    rows = [line for line in md.splitlines() if line.startswith("| probe: ") or line.startswith("| step-0 ")]
    assert len(rows) == len(decision.budgets) + sum(s.name.startswith("step-0 ") for s in decision.signals)
    assert [f.name for f in doc.figures] == ["decision_accuracy"] and doc.figures[0].png.startswith(b"\x89PNG")


def test_report_section_without_separated_pairs_has_no_plot(tmp_path):
    from pipelines.report import Doc, _decision_section, to_markdown

    decision = _decision(tmp_path, samples=200)
    decision.ties, decision.separated = decision.ties + decision.separated, []
    for decider in [*decision.budgets, *decision.signals]:
        decider.accuracy, decider.ci = float("nan"), (float("nan"), float("nan"))
    doc = Doc()
    _decision_section(doc, decision)
    assert not doc.figures and "the **6** it cannot order" in to_markdown(doc, "figures")


@pytest.mark.parametrize("option, value", [("--target-eval-set", "/nonexistent/eval.jsonl"), ("--multiplier", "1")])
def test_validate_probe_refuses_bad_options_before_running(tmp_path, option, value):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "validate-probe",
                             str(bundled_sweep("toy-validation")), "--workspace", str(tmp_path / "ws"), option, value],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and option in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ws").exists()


def test_budgets_use_each_recipes_first_mid_training_replica():
    runs = [_run("base", s, [0.1, 0.2]) for s in (0, 1)]
    for replica in (1235, 1234):
        for seed in (0, 1):
            run = _run("qa", seed, [0.3, 0.4])
            run.replica = replica
            runs.append(run)
    kept = first_replica(runs)
    assert sorted((r.recipe, r.replica, r.seed) for r in kept) == [
        ("base", None, 0), ("base", None, 1), ("qa", 1234, 0), ("qa", 1234, 1)]
