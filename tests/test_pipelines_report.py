"""The report's verdict and cheap signals, on constructed results (no stage runs)."""

from pathlib import Path

import numpy as np
import pytest

from pipelines.ranking import ProbeRun, rank, verdict
from pipelines.report import build, to_markdown
from pipelines.results import StageInfo, SweepResults


def _probe(recipe, seed, acc_by_step, n=120):
    rng = np.random.default_rng(seed)
    correct = np.array([(rng.random(n) < a).astype(float) for a in acc_by_step])
    return ProbeRun(recipe, seed, f"{recipe}-{seed}", "h1", [0, 5, 10][:len(acc_by_step)], correct,
                    [str(i) for i in range(n)])


def _verdict(runs):
    return verdict(rank(runs, samples=400), runs)


def test_a_separated_lead_is_named_the_winner():
    runs = [_probe("cot", s, [0.2, 0.5, 0.6]) for s in range(3)] + [_probe("short", s + 9, [0.2, 0.2, 0.2]) for s in range(3)]
    line = _verdict(runs)
    assert line.startswith("**cot** ranks first by auc_acc")
    assert "cot − short = +0.3" in line


def test_one_rl_seed_names_no_winner():
    runs = [_probe("cot", 0, [0.2, 0.5, 0.6]), _probe("short", 9, [0.2, 0.2, 0.2])]
    line = _verdict(runs)
    assert "ranks first" not in line and "conditional on one RL seed" in line
    assert line.startswith("**cot** leads by auc_acc")


def test_a_winner_is_separated_from_every_other_recipe():
    """b trails a by a constant margin; c scores 0 or 0.95 by seed (mean below b's) and its
    interval spans a's: a is not separated from c, so no winner."""
    def exact(recipe, seed, acc):
        return ProbeRun(recipe, seed, f"{recipe}-{seed}", "h1", [0, 5, 10], np.full((3, 40), acc),
                        [str(i) for i in range(40)])
    runs = [exact("a", s, 0.7) for s in range(4)] + [exact("b", s, 0.5) for s in range(4)]
    runs += [exact("c", s, acc) for s, acc in enumerate((0.0, 0.95, 0.0, 0.95))]
    ranking = rank(runs, samples=400)
    assert [r.recipe for r in ranking.recipes] == ["a", "b", "c"] and ranking.difference_ci("a", "b")[1] > 0
    line = verdict(ranking, runs)
    assert line.startswith("**Not separated**") and "a − c" in line and "ranks first" not in line


def test_a_lead_whose_interval_includes_zero_names_no_winner():
    runs = [_probe(r, s + 10 * i, [0.3, 0.32, 0.33]) for i, r in enumerate(("a", "b", "c")) for s in range(2)]
    line = _verdict(runs)
    assert line.startswith("**Not separated** by auc_acc: the probe names no winner")
    assert "ranks first" not in line and "and the interval includes 0" in line


def test_not_separated_at_the_top_but_separated_from_the_worst():
    runs = [_probe("a", s, [0.5, 0.6, 0.6]) for s in range(3)] + [_probe("b", s + 5, [0.5, 0.6, 0.6]) for s in range(3)]
    runs += [_probe("bad", s + 20, [0.05, 0.05, 0.05]) for s in range(3)]
    line = _verdict(runs)
    assert line.startswith("**Not separated**") and "which excludes 0: the recipes differ, but not at the top" in line


def test_no_reward_signal_is_said_instead_of_a_ranking():
    runs = [_probe(r, s, [0.0, 0.0, 0.0]) for r in ("base", "cot") for s in range(2)]
    line = _verdict(runs)
    assert line.startswith("**No reward signal**") and "ranks first" not in line


def _stage(ref_key, recipes, phase, init, val_loss, workspace: Path, val_losses=None) -> StageInfo:
    return StageInfo("midtrain", ref_key, {"kind": "midtrain", "recipes": recipes, "phase": phase},
                     workspace / ref_key, {"config": {"phase": phase}, "inputs": {"init": init}},
                     {"train/loss": [(1, 3.0), (2, val_loss + 0.1)],
                      **{f"val/{c}/loss": [(2, v)] for c, v in (val_losses or {"gsm": val_loss}).items()}})


def _signal_row(md: str, name: str) -> dict[str, str]:
    header = next(line for line in md.splitlines() if line.startswith("| signal |"))
    row = next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
    return dict(zip([c.strip() for c in header.split("|")[3:-1]], [c.strip() for c in row.split("|")[3:-1]]))


def test_val_loss_signal_reads_only_the_corpora_every_recipe_shares(tmp_path):
    """A recipe whose decay mix has a repetitive corpus has a tiny loss on it; averaged with its
    other corpora it looked best by construction. On the corpus both validate on, it is worse."""
    midtrain = [_stage("dr", ["repeat"], "decay", "external/base", 0, tmp_path, {"web": 3.0, "boxed_repeat": 0.2}),
                _stage("dc", ["cot"], "decay", "external/base", 0, tmp_path, {"web": 2.0, "qa_cot": 1.5})]
    probes = [_probe("cot", s, [0.2, 0.5, 0.6]) for s in range(2)] + [_probe("repeat", s + 9, [0.2, 0.2, 0.2]) for s in range(2)]
    info = {p.key: StageInfo("probe", p.key, {"kind": "probe"}, tmp_path, {"config": {"spec": {"name": "x"}}}, {})
            for p in probes}
    results = SweepResults("s", probes, info, {}, midtrain, None)
    corpora, losses = results.validation_loss(["repeat", "cot"])
    assert corpora == ["web"] and losses.tolist() == [3.0, 2.0]
    doc, _ = build(results, "t", samples=200, n_rollouts=0)
    md = to_markdown(doc, "figures")
    assert _signal_row(md, "−val loss (web)") == {"cot": "-2.000", "repeat": "-3.000"}
    assert "| −val loss |" not in md


def test_cheap_signal_val_loss_is_each_recipes_own_last_stage(tmp_path):
    """Both decay branches fork one shared stable stage. The store lists stages in no particular
    order; here the shared stable stage comes last, where the old code read every recipe's loss."""
    stable = _stage("s", ["cot", "short"], "stable", "external/base", 2.0, tmp_path)
    midtrain = [_stage("dc", ["cot"], "decay", "midtrain/s", 1.25, tmp_path),
                _stage("ds", ["short"], "decay", "midtrain/s", 1.75, tmp_path), stable]
    probes = [_probe("cot", s, [0.2, 0.5, 0.6]) for s in range(2)] + [_probe("short", s + 9, [0.2, 0.2, 0.2]) for s in range(2)]
    info = {p.key: StageInfo("probe", p.key, {"kind": "probe"}, tmp_path, {"config": {"spec": {"name": "x"}}}, {})
            for p in probes}
    results = SweepResults("s", probes, info, {}, midtrain, None)
    assert [m.key for m in results.midtrain_for("short")] == ["s", "ds"]

    doc, ranking = build(results, "t", samples=200, n_rollouts=0)
    md = to_markdown(doc, "figures")
    assert _signal_row(md, "−val loss (gsm)") == {"cot": "-1.250", "short": "-1.750"}
    assert md.split("\n\n")[1].startswith("**cot** ranks first")  # the verdict is the report's first line


def test_each_gain_is_shown_beside_its_random_reward_controls(tmp_path):
    probes = [_probe("cot", s, [0.2, 0.5, 0.6]) for s in range(2)] + [_probe("short", s + 9, [0.2, 0.2, 0.25]) for s in range(2)]
    controls = [_probe("cot", s + 30, [0.2, 0.2, 0.2]) for s in range(2)]
    info = {p.key: StageInfo("probe", p.key, {"kind": "probe"}, tmp_path, {"config": {"spec": {"name": "x"}}}, {})
            for p in probes + controls}
    for control in controls:
        control.key += "-control"
    results = SweepResults("s", probes, info, {}, [], None, controls=controls)
    md = to_markdown(build(results, "t", samples=200, n_rollouts=0)[0], "figures")
    assert "Random-reward control" in md
    row = next(line for line in md.splitlines() if line.startswith("| cot |") and "2 / 2" in line)
    gain, control, difference = (float(c) for c in row.split("|")[2:5])
    assert gain > 0.3 and abs(control) < 0.1 and difference == pytest.approx(gain - control, abs=2e-3)
    assert not any(line.startswith("| short |") and "/ " in line for line in md.splitlines())  # no control run


def test_avg_at_k_is_a_column_beside_greedy_accuracy(tmp_path):
    import json

    probes = [_probe("cot", s, [0.2, 0.5, 0.6]) for s in range(2)] + [_probe("short", s + 9, [0.2, 0.2, 0.2]) for s in range(2)]
    info = {}
    for p in probes:
        run_dir = tmp_path / p.key
        (run_dir / "rollouts").mkdir(parents=True)
        sampled = {0: 0.25, 10: 0.5 if p.recipe == "cot" else 0.25}  # each problem right in this share of 4 samples
        for step, share in sampled.items():
            rows = [{"id": str(i), "acc": k < 4 * share, "split": "eval-sampled"} for i in range(8) for k in range(4)]
            (run_dir / "rollouts" / f"step_{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        info[p.key] = StageInfo("probe", p.key, {"kind": "probe"}, run_dir,
                                {"config": {"spec": {"name": "x", "eval_sampled": 4, "temperature": 1.0}}}, {})
    md = to_markdown(build(SweepResults("s", probes, info, {}, [], None), "t", samples=200, n_rollouts=0)[0], "f")
    header = next(line for line in md.splitlines() if line.startswith("| recipe | step-0 pass@8"))
    assert header.rstrip(" |").endswith("avg@4 step 0 → last (T=1.0)")
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in md.splitlines()
            if line.startswith(("| cot |", "| short |")) and "→" in line}
    assert rows == {"cot": "0.250 → 0.500", "short": "0.250 → 0.250"}


def test_what_the_model_writes_before_and_after_rl_is_shown_escaped_with_its_reward(tmp_path):
    import json

    from pipelines.report import to_html

    probes = [_probe("cot", s, [0.2, 0.5, 0.6]) for s in (1, 0)]
    info = {}
    for p in probes:
        (tmp_path / p.key).mkdir()
        rows = [{"step": step, "id": "7", "prompt": "What is <b>2+2</b>?", "response": f"seed {p.seed}: \\boxed{{{a}}}",
                 "reward": r, "acc": r == 1.0, "pred": a} for step, a, r in ((0, "5", 0.0), (10, "4", 1.0))]
        (tmp_path / p.key / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        info[p.key] = StageInfo("probe", p.key, {"kind": "probe"}, tmp_path / p.key, {"config": {"spec": {"name": "x"}}}, {})
    doc = build(SweepResults("s", probes, info, {}, [], None), "t", samples=200, n_rollouts=2)[0]
    md = to_markdown(doc, "f")
    assert "**cot · seed 0 · step 0** — reward 0.0, correct False" in md
    assert "**cot · seed 0 · step 10** — reward 1.0, correct True" in md and "seed 1:" not in md
    page = to_html(doc, "t")
    assert "What is &lt;b&gt;2+2&lt;/b&gt;?" in page and "<b>2+2</b>" not in page
