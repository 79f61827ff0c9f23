"""End to end: `midprobe demo --preset smoke` through every real engine, then a cached re-run."""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines.sweep import bundled_sweep


def _demo(workspace: Path, *options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "demo", "--preset", "smoke",
                           "--workspace", str(workspace), *options], capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("smoke")
    started = time.time()
    result = _demo(workspace)
    assert result.returncode == 0, result.stderr[-4000:]
    return workspace, result, time.time() - started


def test_demo_writes_a_report_naming_every_recipe(smoke_run):
    workspace, result, _ = smoke_run
    report_path = Path(result.stdout.strip().splitlines()[-1])
    assert report_path == workspace / "reports" / "toy-smoke" / "report.html"
    md = (report_path.parent / "report.md").read_text()
    sweep = yaml.safe_load(bundled_sweep("toy-smoke").read_text())
    ranking = md.split("## Ranking", 1)[1].split("## Probe", 1)[0]
    rows = [line for line in ranking.splitlines() if re.match(r"\| \d+ \|", line)]
    ranked = [row.split("|")[2].strip() for row in rows]
    assert sorted(ranked) == sorted([*sweep["recipes"], "base"])
    html = report_path.read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<table>" in html


def test_every_number_traces_to_a_finished_stage_run(smoke_run):
    workspace, result, _ = smoke_run
    md = (workspace / "reports" / "toy-smoke" / "report.md").read_text()
    refs = re.findall(r"\b(probe|midtrain|curate)/([0-9a-f]{16})\b", md)
    assert refs
    db = sqlite3.connect(workspace / "index.sqlite")
    for stage, key in refs:
        assert (workspace / stage / key / "manifest.json").is_file()
        assert db.execute("SELECT status FROM runs WHERE stage=? AND key=?", (stage, key)).fetchone() == ("done",)
    n_probe = db.execute("SELECT COUNT(*) FROM metrics WHERE stage='probe' AND name='critic/score/mean'").fetchone()[0]
    assert n_probe > 0
    assert not list(workspace.glob("*/.*.partial"))


def test_token_mix_states_the_epochs_each_stage_reads(smoke_run):
    """Every stage's share of each corpus in epochs of its curated tokens, never rounded to 0."""
    workspace, _, _ = smoke_run
    table = (workspace / "reports" / "toy-smoke" / "report.md").read_text().split("### Token mix", 1)[1]
    shown = sorted((m[0], int(m[1]), float(m[2])) for m in re.findall(r"(\w+) (\d+)% \(([^ ]+) ep\)", table))
    expected = []
    for path in workspace.glob("midtrain/*/manifest.json"):
        manifest = json.loads(path.read_text())
        if manifest["config"]["phase"] == "pretrain":  # the base is not a recipe's stage
            continue
        for corpus, weight in manifest["config"]["mix"].items():
            curated = json.loads((workspace / manifest["inputs"][f"corpus:{corpus}"] / "curation.json").read_text())
            expected.append((corpus, round(weight * 100), manifest["config"]["train"]["tokens"] * weight / curated["tokens"]))
    expected.sort()
    assert [row[:2] for row in shown] == [row[:2] for row in expected]
    for (_, _, epochs_shown), (corpus, share, epochs) in zip(shown, expected):
        assert epochs_shown == pytest.approx(epochs, rel=0.05), (corpus, share)


def test_decay_branches_start_at_the_stable_lr(smoke_run):
    """On the forks the demo really ran: a decay branch's first step trains at the LR its
    stable stage ended with (no second warmup), and its last at min_lr."""
    workspace, _, _ = smoke_run

    def metrics(ref):
        return [json.loads(line)["data"] for line in (workspace / ref / "metrics.jsonl").read_text().splitlines()]

    decays = [json.loads(p.read_text()) for p in workspace.glob("midtrain/*/manifest.json")
              if json.loads(p.read_text())["config"]["phase"] == "decay"]
    assert len(decays) == 3
    for decay in decays:
        stable = metrics(decay["inputs"]["init"])
        branch = metrics(f"midtrain/{decay['key']}")
        assert branch[0]["train/lr"] == stable[-1]["train/lr"] == decay["config"]["train"]["lr"]
        assert branch[-1]["train/lr"] == pytest.approx(decay["config"]["train"]["min_lr"])


def test_midtrain_runs_keep_only_the_forked_states_and_the_exports_the_plan_estimates(smoke_run):
    """Of the forked sweep's training states, only the stable stage's final one is on disk (the
    decay branches continued it); each run has its export at the end and no other; what the runs
    keep weighs what `plan` estimates."""
    from pipelines.disk import sweep_disk
    from pipelines.plan import build_plan
    from pipelines.preflight import load_sweep

    workspace, _, _ = smoke_run
    sweep_path = bundled_sweep("toy-smoke")
    plan = build_plan(load_sweep(sweep_path), sweep_path)
    estimate = sweep_disk(load_sweep(sweep_path), sweep_path, plan, cuda=False)  # torch AdamW states
    phases = []
    for run in (r for r in plan.runs() if r.stage == "midtrain"):
        path = workspace / run.ref
        phases.append(run.config.phase)
        states = sorted(p.name for p in (path / "state").iterdir())
        assert states == ([f"step_{json.loads((path / 'summary.json').read_text())['steps']:08d}"]
                          if run.config.phase == "stable" else []), (run.label, states)
        assert (path / "hf" / "model.safetensors").is_file() and not (path / "hf_checkpoints").exists()
        kept = sum(p.stat().st_size for d in ("state", "hf") for p in (path / d).rglob("*") if p.is_file())
        assert kept == pytest.approx(estimate.midtrain[run].kept, rel=0.1), run.label
    assert sorted(phases) == ["decay"] * 3 + ["pretrain", "stable"]


def test_second_demo_reuses_every_stage(smoke_run):
    workspace, first, first_seconds = smoke_run
    started = time.time()
    again = _demo(workspace)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing" in again.stderr and "▶" not in again.stderr
    assert time.time() - started < max(60, first_seconds / 3)
    assert again.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]


def _published_runs(workspace: Path) -> list[Path]:
    return [manifest.parent for manifest in workspace.glob("*/*/manifest.json")]


def test_validate_probe_measures_decision_accuracy_against_longer_runs(smoke_run):
    """New probes of the demo's checkpoints, with every published run read-only."""
    workspace, _, _ = smoke_run
    env = {**os.environ, "WANDB_MODE": "offline"}
    published = _published_runs(workspace)
    for run in published:
        subprocess.run(["chmod", "-R", "a-w", str(run)], check=True)
    try:
        result = subprocess.run([sys.executable, "-m", "pipelines.cli", "validate-probe",
                                 str(bundled_sweep("toy-smoke")), "--workspace", str(workspace),
                                 "--multiplier", "2", "--target-seeds", "1000"],
                                capture_output=True, text=True, env=env, timeout=900)
    finally:
        for run in published:
            subprocess.run(["chmod", "-R", "u+w", str(run)], check=True)
    assert result.returncode == 0, result.stderr[-4000:]
    counted = re.search(r"decision accuracy: (\S+) over (\d+) recipe pairs", result.stdout)
    saved = json.loads((workspace / "reports" / "toy-smoke" / "decision.json").read_text())
    assert saved["pairs"] == int(counted.group(2))
    assert saved["pairs"] + saved["target_ties"] == 6  # 3 recipes + base: every pair separated or tied
    assert {(b["steps"], b["seeds"]) for b in saved["budgets"]} == {(s, k) for s in (2, 4) for k in (1, 2)}
    assert {"step-0 pass@1", "few-shot accuracy", "step-0 policy entropy"} <= {s["name"] for s in saved["signals"]}
    specs = [json.loads(p.read_text())["config"]["spec"] for p in (workspace / "probe").glob("*/manifest.json")]
    short_spec = next(s for s in specs if s["name"] == "toy-smoke-v1")
    targets = [s for s in specs if s["name"] == "toy-smoke-v1-x2"]
    assert len(targets) == 4
    for spec in targets:  # twice the training, the same number of evaluations
        assert spec["steps"] == 2 * short_spec["steps"] and spec["eval_every"] == 2 * short_spec["eval_every"]
    assert "## Decision accuracy" in (workspace / "reports" / "toy-smoke" / "report.md").read_text()
    problems = [json.loads(p.read_text())["config"] for p in (workspace / "problems").glob("*/manifest.json")]
    assert any(c["eval_set"].get("offset") for c in problems)  # the target's own held-out problems
    # the curves mode reads the workspace: the sweep's long target runs, one group
    curves = subprocess.run([sys.executable, "-m", "pipelines.cli", "validate-probe", "--curves", str(workspace),
                             "--workspace-sweep", "toy-smoke", "--out", str(workspace / "curves")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert curves.returncode == 0, curves.stderr[-4000:]
    groups = json.loads((workspace / "curves" / "decision.json").read_text())["groups"]
    assert list(groups) == ["toy-smoke--target"] and groups["toy-smoke--target"]["horizon"] == 8
    assert sorted(groups["toy-smoke--target"]["runs"]) == sorted(json.loads(
        (workspace / "reports" / "toy-smoke" / "decision.json").read_text())["recipes"])
    # the sweep mode's rows of signals by budget are the curves mode's on the same runs (one computation;
    # the toy-smoke report's bootstrap settings are the curves mode's defaults)
    curve_rows = json.loads((workspace / "curves" / "decision.json").read_text())
    assert saved["rows"] == curve_rows["rows"] and saved["definitions"] == curve_rows["definitions"]


@pytest.mark.slow
def test_a_second_replica_reuses_the_first_and_the_report_includes_it(smoke_run, tmp_path):
    workspace = tmp_path / "replicas"
    shutil.copytree(smoke_run[0], workspace)
    result = _demo(workspace, "--replicas", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    trained = [line for line in result.stderr.splitlines() if line.startswith("▶ midtrain")]
    # only the new replica trains: one shared stable stage and three decay branches
    assert len(trained) == 4 and all("replica 1235" in line for line in trained), trained
    md = (workspace / "reports" / "toy-smoke" / "report.md").read_text()
    assert "mid-training replicas (1–2 per recipe)" in md  # the base is one model, not replicated
    assert "### Mid-training replicas" in md and "replica 1234" in md and "replica 1235" in md
    assert "Order within each replica" in md


def test_no_stage_writes_into_a_published_run(smoke_run):
    """A run is published whole (its manifest written last, then renamed into place) and never
    written again: no file in it is newer than its manifest, across the demo, its re-run and
    validate-probe (the read-only check above cannot stop root; this one can see root's
    writes). Mid-training kept megatron's dataset index cache in the curation runs it read."""
    workspace, _, _ = smoke_run
    runs = _published_runs(workspace)
    assert len(runs) > 20
    for run in runs:
        written = (run / "manifest.json").stat().st_mtime_ns
        later = [str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.stat().st_mtime_ns > written]
        assert not later, f"{run}: written after publishing: {later[:5]}"
