"""Ranking statistics and failure-mode rules on constructed probe runs."""

import numpy as np
import pytest

from pipelines.failures import classify
from pipelines.ranking import ProbeRun, rank, run_scores, separation_budget, spearman


def _run(recipe, seed, acc_by_step, n=200, spec="h1", rng=None):
    rng = rng or np.random.default_rng(seed)
    correct = np.array([(rng.random(n) < a).astype(float) for a in acc_by_step])
    return ProbeRun(recipe, seed, f"{recipe}{seed}", spec, list(range(0, 5 * len(acc_by_step), 5)),
                    correct, [str(i) for i in range(n)])


def test_run_scores_by_hand():
    correct = np.array([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=float)  # acc .5 .75 1
    assert run_scores(correct, "final_acc") == pytest.approx(1.0)
    assert run_scores(correct, "final_gain") == pytest.approx(0.5)
    assert run_scores(correct, "auc_gain") == pytest.approx((0.25 + 0.5) / 2)
    assert run_scores(correct, "auc_acc") == pytest.approx((0.75 + 1.0) / 2)
    assert run_scores(correct, "fitted_gain") == pytest.approx(0.5)  # on a straight line: the rise
    noisy = np.array([[1, 0], [0, 0], [1, 1], [1, 0]], dtype=float)  # acc .5 0 1 .5: slope 0.1 per eval
    assert run_scores(noisy, "fitted_gain") == pytest.approx(0.3)
    assert run_scores(np.stack([correct, 1 - correct]), "fitted_gain") == pytest.approx([0.5, -0.5])


def test_separated_recipes_get_an_interval_excluding_zero():
    runs = [_run("good", s, [0.2, 0.4, 0.6]) for s in range(3)]
    runs += [_run("bad", s + 10, [0.2, 0.2, 0.2]) for s in range(3)]
    ranking = rank(runs, samples=500)
    assert [r.recipe for r in ranking.recipes] == ["good", "bad"]
    point, lo, hi = ranking.difference_ci("good", "bad")
    assert lo > 0 and point > 0.2
    assert ranking.beats[("good", "bad")] > 0.99
    best = ranking.recipes[0]
    assert best.ci_low <= best.score <= best.ci_high


def test_identical_recipes_are_not_separated():
    runs = [_run("a", s, [0.3, 0.35]) for s in range(3)] + [_run("b", s + 5, [0.3, 0.35]) for s in range(3)]
    ranking = rank(runs, samples=500)
    _, lo, hi = ranking.difference_ci("a", "b")
    assert lo < 0 < hi


def test_learning_is_detected_only_where_accuracy_rises():
    runs = [_run("learns", s, [0.2, 0.25, 0.3, 0.35, 0.4]) for s in range(2)]
    runs += [_run("flat", s + 10, [0.3] * 5) for s in range(2)]
    by_recipe = {r.recipe: r for r in rank(runs, score="fitted_gain", samples=500).recipes}
    assert by_recipe["learns"].ci_low > 0.05
    assert by_recipe["flat"].ci_low < 0 < by_recipe["flat"].ci_high


def test_refuses_to_mix_probe_specs():
    with pytest.raises(ValueError, match="different probe specs"):
        rank([_run("a", 0, [0.1, 0.2], spec="x"), _run("b", 0, [0.1, 0.2], spec="y")])


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def _series(values):
    return [(i, float(v)) for i, v in enumerate(values)]


def test_failure_modes():
    steps = 20
    repeat = {"behaviour/repetition_ratio": _series(np.linspace(0.1, 0.9, steps)),
              "response_length/clip_ratio": _series(np.linspace(0.0, 0.8, steps))}
    assert classify(repeat, np.array([0.1, 0.1])) == ["repetition"]

    collapse = {"response_length/mean": _series(np.r_[np.full(10, 40.0), np.full(10, 8.0)])}
    assert classify(collapse, np.array([0.1, 0.1])) == ["length-collapse"]
    assert classify(collapse, np.array([0.1, 0.3])) == []  # shorter and better: learning the format

    reward = {"critic/score/mean": _series(np.r_[np.linspace(-0.5, 0.6, 12), np.full(8, -0.4)])}
    assert classify(reward, np.array([0.1, 0.1])) == ["reward-collapse"]

    hacking = {"behaviour/format_error_ratio": _series(np.linspace(0.8, 0.0, steps))}
    assert classify(hacking, np.array([0.10, 0.10])) == ["format-hacking"]
    assert classify(hacking, np.array([0.10, 0.40])) == []  # format learned and accuracy rose

    healthy = {"critic/score/mean": _series(np.linspace(-0.2, 0.7, steps)),
               "response_length/mean": _series(np.full(steps, 30.0)),
               "behaviour/repetition_ratio": _series(np.zeros(steps)),
               "response_length/clip_ratio": _series(np.zeros(steps))}
    assert classify(healthy, np.array([0.2, 0.5])) == []


def _replicated(recipe, replica_means, rng, seeds=2, n=400, evals=5):
    """Probe runs of a recipe mid-trained once per replica; replica r's runs have accuracy
    replica_means[r] at every eval (probe-seed and problem noise: Bernoulli draws)."""
    return [ProbeRun(recipe, seed, f"{recipe}-{r}-{seed}", "h1", list(range(evals)),
                     (rng.random((evals, n)) < mean).astype(float), [str(i) for i in range(n)],
                     replica=r)
            for r, mean in enumerate(replica_means) for seed in range(seeds)]


def test_interval_widens_with_between_replica_spread_and_covers():
    """Constructed metrics: 6 mid-training replicas whose true scores scatter with SD 0.08
    around 0.4. The interval must carry that spread (the seeds-and-problems interval of one
    replica is far narrower) and cover 0.4 about as often as it claims."""
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    trials = 30
    for _ in range(trials):
        runs = _replicated("a", 0.4 + rng.normal(0, 0.08, size=6), rng)
        r = rank(runs, samples=300, seed=int(rng.integers(1 << 30))).recipes[0]
        covered += r.ci_low <= 0.4 <= r.ci_high
        widths.append(r.ci_high - r.ci_low)
        assert r.per_replica.keys() == set(range(6)) and r.replica_spread > 0
    conditional = rank([p for p in runs if p.replica == 0], samples=300).recipes[0]
    # the replica means' SE is 0.08 / sqrt(6) = 0.033: a 95 % interval about 0.13 wide
    assert 0.09 < np.median(widths) < 0.2
    assert conditional.ci_high - conditional.ci_low < 0.5 * np.median(widths)
    # a percentile bootstrap over 6 replicas covers a little under 95 %
    assert covered / trials >= 0.8


def test_replicas_shared_between_recipes_are_paired():
    """Replica r of both recipes shares its mid-training (a shared stable stage): a constant
    0.06 lead is separated although each recipe's own interval spans the replica spread."""
    rng = np.random.default_rng(1)
    shift = rng.normal(0, 0.1, size=4)
    runs = _replicated("a", 0.46 + shift, rng) + _replicated("b", 0.40 + shift, rng)
    ranking = rank(runs, samples=1000)
    a, b = ranking.recipes
    assert (a.recipe, b.recipe) == ("a", "b")
    assert a.ci_low < b.ci_high  # the recipes' intervals overlap ...
    _, lo, hi = ranking.difference_ci("a", "b")
    assert 0 < lo < 0.06 < hi  # ... but the paired difference excludes 0
    assert "mid-training replicas (4 per recipe)" in ranking.sources


def test_one_replica_says_its_interval_is_conditional():
    ranking = rank([_run("a", s, [0.3, 0.4]) for s in range(2)], samples=200)
    assert "conditional on one mid-training run" in ranking.sources
    assert ranking.recipes[0].replica_spread == 0


def test_report_shows_each_replica_and_whether_the_order_holds_in_it():
    from pipelines.report import Doc, _replica_section

    rng = np.random.default_rng(2)
    # replica 1 of "b" is so good that it beats "a" in that replica only
    ranking = rank(_replicated("a", [0.5, 0.5], rng) + _replicated("b", [0.2, 0.6], rng), samples=200)
    doc = Doc()
    _replica_section(doc, ranking)
    (_, (header, rows)), = [b for b in doc.blocks if b[0] == "table"]
    assert header == ["recipe", "replica 0", "replica 1", "spread"]
    spread = {row[0]: float(row[-1]) for row in rows}
    assert spread["b"] == pytest.approx(0.4, abs=0.05) and spread["a"] < 0.05
    order = next(text for kind, text in doc.blocks if kind == "p" and text.startswith("Order"))
    assert "replica 0: a > b (the overall order)" in order and "replica 1: b > a (differs)" in order
    single = Doc()
    _replica_section(single, rank([_run("a", 0, [0.2, 0.3])], samples=100))
    assert not single.blocks  # nothing to show without replicas


def _exact(recipe, seed, acc, n=50, replica=None):
    """A run scoring `acc` on every problem at every eval: resampling problems changes nothing,
    so an interval is the seed (and replica) level's alone."""
    return ProbeRun(recipe, seed, f"{recipe}{seed}-{replica}", "h1", [0, 5, 10], np.full((3, n), float(acc)),
                    [str(i) for i in range(n)], replica=replica)


def test_the_seed_level_is_not_shrunk_by_the_bootstrap():
    """Three seeds scoring 0.2, 0.5, 0.8: the mean's standard error is s / sqrt(3) = 0.3 / sqrt(3)
    (s with n - 1); a plain percentile bootstrap gives sqrt(2/3) of it."""
    ranking = rank([_exact("a", s, acc) for s, acc in enumerate((0.2, 0.5, 0.8))], samples=8000)
    assert ranking.replicates["a"].std() == pytest.approx(0.3 / np.sqrt(3), rel=0.03)


def test_the_replica_level_is_not_shrunk_by_the_bootstrap():
    runs = [_exact("a", s, acc, replica=r) for r, acc in enumerate((0.2, 0.5, 0.8)) for s in (0, 1)]
    ranking = rank(runs, samples=8000)
    assert ranking.replicates["a"].std() == pytest.approx(0.3 / np.sqrt(3), rel=0.03)


def test_seeds_are_paired_across_recipes():
    """Seed s moves both recipes alike (the same RL prompts and draws): b trails a by 0.05 on
    every seed, so the paired difference is exactly 0.05 though the seeds spread by 0.3."""
    runs = [_exact(r, s, acc - 0.05 * (r == "b")) for r in "ab" for s, acc in enumerate((0.2, 0.5, 0.8))]
    ranking = rank(runs, samples=2000)
    assert ranking.difference_ci("a", "b") == pytest.approx((0.05, 0.05, 0.05))
    assert ranking.beats[("a", "b")] == 1.0


def test_ties_in_a_replicate_count_half_each_way():
    runs = [_exact(r, s, 0.0) for r in "ab" for s in range(2)]
    ranking = rank(runs, samples=200)
    assert ranking.beats[("a", "b")] == ranking.beats[("b", "a")] == 0.5


def _pair(rng, seeds, n=200, difference=0.04, seed_sd=0.03):
    """Recipes a and b on shared problems (difficulty varies by problem) and shared seeds (a seed
    moves both alike, plus each run's own offset): a's true lead is `difference`."""
    difficulty = rng.uniform(0.2, 0.8, size=n)
    runs = []
    for s in range(seeds):
        shared = rng.normal(0, 0.05)
        for recipe, lead in (("a", difference), ("b", 0.0)):
            p = np.clip(difficulty + shared + lead + rng.normal(0, seed_sd), 0, 1)
            correct = (rng.random((3, n)) < p).astype(float)
            runs.append(ProbeRun(recipe, s, f"{recipe}{s}", "h1", [0, 5, 10], correct, [str(i) for i in range(n)]))
    return runs


def test_separation_budget_matches_the_bootstrap_spread():
    runs = _pair(np.random.default_rng(0), seeds=12)
    ranking = rank(runs, samples=4000)
    point, lo, hi = ranking.difference_ci("a", "b")
    budget = separation_budget(runs, "a", "b")
    assert budget.difference == pytest.approx(point)
    assert (budget.unit, budget.n_units, budget.n_problems) == ("probe seeds", 12, 200)
    assert budget.standard_error == pytest.approx((hi - lo) / (2 * 1.96), rel=0.05)


def test_separation_budget_separates_as_often_as_it_promises():
    """Seeds counted on a 12-seed pilot, then fresh studies with that many seeds and the pilot's
    measured lead as the true one: about 80 % of their intervals exclude 0 (the budget's power);
    with 3 seeds most do not."""
    rng = np.random.default_rng(1)
    budget = separation_budget(_pair(rng, seeds=12), "a", "b")
    assert budget.units_needed is not None and 6 <= budget.units_needed <= 40

    def separated(seeds: int) -> float:
        return np.mean([rank(_pair(rng, seeds, difference=budget.difference), samples=300)
                        .difference_ci("a", "b")[1] > 0 for _ in range(40)])

    assert 0.65 <= separated(budget.units_needed) <= 0.97
    assert separated(3) < 0.5


def test_separation_budget_says_when_it_cannot_tell():
    one_seed = [_run("a", 0, [0.3, 0.4]), _run("b", 0, [0.3, 0.35])]
    budget = separation_budget(one_seed, "a", "b")
    assert budget.unit_var is None and budget.units_needed is None and budget.problems_needed is None
    nil = [_exact(r, s, acc) for r in "ab" for s, acc in enumerate((0.2, 0.5, 0.8))]
    assert separation_budget(nil, "a", "b").units_needed is None  # no difference: no count separates it


def test_report_says_what_would_separate_a_tied_pair():
    from pipelines.report import Doc, _separation_section
    from pipelines.results import SweepResults

    runs = _pair(np.random.default_rng(1), seeds=3)
    ranking = rank(runs, samples=500)
    assert ranking.difference_ci("a", "b")[1] <= 0  # not separated at 3 seeds
    doc = Doc()
    _separation_section(doc, SweepResults("s", runs, {}, {}, [], None), ranking)
    (_, (header, rows)), = [b for b in doc.blocks if b[0] == "table"]
    assert header[-2:] == ["probe seeds needed", "problems needed"]
    budget = separation_budget(runs, "a", "b")
    assert rows == [["a − b", f"{budget.difference:+.3f}", rows[0][2], "3", rows[0][4], rows[0][5],
                     f"{budget.units_needed:,}" if budget.units_needed else "–",
                     f"{budget.problems_needed:,}" if budget.problems_needed else "–"]]
    one_seed = Doc()
    single = [_run("a", 0, [0.3, 0.4]), _run("b", 0, [0.3, 0.39], rng=np.random.default_rng(7))]
    _separation_section(one_seed, SweepResults("s", single, {}, {}, [], None), rank(single, samples=200))
    assert "at least 2 of them" in one_seed.blocks[-1][1]
