"""No silent staleness: a stage's code cannot change without a recorded decision (a version bump,
which re-keys its runs, or equal outputs shown), and `plan` says "code changed"."""

import json
import re
import shutil
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from pipelines import code_versions
from pipelines.plan import build_plan, why_run
from pipelines.stages import STAGES
from pipelines.store import RunStore
from pipelines.preflight import load_sweep
from pipelines.sweep import bundled_sweep

HOW = ("python -m pipelines.code_versions --bump STAGE (its outputs change) or --same-outputs STAGE "
       "--before WS --after WS (docs/operations.md, 'Stage keys and code versions')")


def test_every_stage_s_code_is_what_its_recorded_version_was_recorded_for():
    assert set(code_versions.recorded()) == set(STAGES)
    changed = code_versions.changed()
    assert not changed, f"code of {sorted(changed)} changed since its version was recorded: {HOW}"


@pytest.fixture
def source_copy(tmp_path, monkeypatch):
    """The packages and the table, copied: edits and recorded decisions stay in tmp_path."""
    root = tmp_path / "src"
    for package in ("pipelines", "rl_probe", "data_recipes", "midtrain", "runfiles"):
        shutil.copytree(code_versions.SOURCE_ROOT / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code_versions, "SOURCE_ROOT", root)
    monkeypatch.setattr(code_versions, "TABLE", root / "pipelines" / "code_versions.json")
    code_versions.recorded.cache_clear()
    yield root
    code_versions.recorded.cache_clear()


def _edit_the_reward(root: Path) -> None:
    reward = root / "rl_probe" / "reward.py"
    reward.write_text(reward.read_text() + "\nACCEPTED_ANSWERS = 'also the last number'\n")


def test_a_change_to_the_reward_alone_is_caught_until_a_decision_is_recorded(source_copy):
    """The probe and the difficulty control (which scores pass@k with the reward) changed, nothing
    upstream; --bump raises the probe's version (its keys change), --same-outputs needs proof."""
    _edit_the_reward(source_copy)
    assert set(code_versions.changed()) == {"probe", "select_problems"}

    runner = CliRunner()
    check = runner.invoke(_cli(), [])
    assert check.exit_code == 1 and re.search(r"probe +version \d+ +CHANGED", check.output), check.output
    refused = runner.invoke(_cli(), ["--same-outputs", "probe"])
    assert refused.exit_code == 2 and "--before and --after" in refused.output
    assert runner.invoke(_cli(), ["--bump", "probe"]).exit_code == 2  # without saying why
    version = code_versions.recorded()["probe"]["version"]
    bumped = runner.invoke(_cli(), ["--bump", "probe", "--why", "also the last number is an answer"])
    assert bumped.exit_code == 0, bumped.output
    assert code_versions.recorded()["probe"]["version"] == version + 1
    assert code_versions.recorded()["probe"]["changes"][str(version + 1)] == "also the last number is an answer"
    assert set(code_versions.changed()) == {"select_problems"}


def _cli() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command()(code_versions.main)
    return app


def _run_dir(workspace: Path, stage: str, key: str, files: dict[str, str]) -> None:
    run = workspace / stage / key
    for name, text in {"manifest.json": "{}", **files}.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)


def test_same_outputs_is_recorded_only_where_the_shared_runs_wrote_equal_outputs(source_copy, tmp_path):
    """Runs of the same key in two workspaces compare by their declared outputs; wall-clock
    metrics and files that are not outputs (logs, manifests) do not count."""
    _edit_the_reward(source_copy)
    version = code_versions.recorded()["probe"]["version"]

    def metrics(score: float, seconds: float) -> str:
        return json.dumps({"step": 1, "data": {"critic/score/mean": score, "timing_s/step": seconds}}) + "\n"

    before, after = tmp_path / "before", tmp_path / "after"
    _run_dir(before, "probe", "k1", {"metrics.jsonl": metrics(0.5, 3.0), "stage.log": "a",
                                     "rollouts/step_0.jsonl": "x"})
    _run_dir(after, "probe", "k1", {"metrics.jsonl": metrics(0.5, 9.0), "stage.log": "b",
                                    "rollouts/step_0.jsonl": "x"})
    _run_dir(after, "probe", "k2", {"metrics.jsonl": metrics(0.1, 1.0)})  # only in one workspace
    assert code_versions.differing_outputs("probe", before, after) == (1, [])
    args = ["--same-outputs", "probe", "--before", str(before), "--after", str(after)]
    recorded = CliRunner().invoke(_cli(), args)
    assert recorded.exit_code == 0, recorded.output
    assert code_versions.recorded()["probe"]["version"] == version and "probe" not in code_versions.changed()

    _edit_the_reward(source_copy)
    _run_dir(after, "probe", "k1", {"metrics.jsonl": metrics(0.75, 9.0)})
    refused = CliRunner().invoke(_cli(), args)
    assert refused.exit_code == 2 and "1 of 1 probe runs wrote other outputs" in refused.output
    assert "probe" in code_versions.changed()


def test_plan_says_code_changed_for_the_runs_of_a_bumped_stage(tmp_path, monkeypatch):
    """A probe version bump (what a reward change records) re-keys every probe, nothing upstream,
    and plan gives the reason; keys of a recorded table are those of its versions."""
    sweep = bundled_sweep("toy-smoke")
    store = RunStore(tmp_path / "ws")
    first = build_plan(load_sweep(sweep), sweep)
    store.set_members("toy-smoke", {run: [{}] for run in first.runs()})

    table = {stage: dict(entry) for stage, entry in code_versions.recorded().items()}
    table["probe"]["version"] += 1
    monkeypatch.setattr(code_versions, "recorded", lambda: table)
    assert code_versions.code_versions()["probe"] == table["probe"]["version"]
    second = build_plan(load_sweep(sweep), sweep)
    before = {run.ref for run in first.runs()}
    rekeyed = {run.label for run in second.runs() if run.ref not in before}
    assert rekeyed == {run.label for run in second.probes.values()}
    old = table["probe"]["version"] - 1
    for run in second.probes.values():
        assert why_run(run, store.previous(run, "toy-smoke")) == f"code changed (version {old} → {old + 1})"


def test_a_changed_config_and_code_version_are_both_reasons(tmp_path, monkeypatch):
    sweep = bundled_sweep("toy-smoke")
    store = RunStore(tmp_path / "ws")
    store.set_members("toy-smoke", {run: [{}] for run in build_plan(load_sweep(sweep), sweep).runs()})
    data = yaml.safe_load(sweep.read_text())
    data["midtrain"]["lr"] = 0.002
    edited = tmp_path / "sweep.yaml"
    edited.write_text(yaml.safe_dump(data))
    table = {stage: dict(entry) for stage, entry in code_versions.recorded().items()}
    table["midtrain"]["version"] += 1
    monkeypatch.setattr(code_versions, "recorded", lambda: table)
    run = next(r for r in build_plan(load_sweep(edited), edited).runs() if r.label == "midtrain control stable")
    old = table["midtrain"]["version"] - 1
    assert why_run(run, store.previous(run, "toy-smoke")) == \
        f"code changed (version {old} → {old + 1}); config: train.lr 0.001 → 0.002"


def test_a_comment_or_docstring_edit_needs_no_decision(source_copy):
    """Only what can change outputs counts: comments and docstrings are left out of the digest."""
    reward = source_copy / "rl_probe" / "reward.py"
    text = reward.read_text()
    edited = text.replace('"""Rule-based math reward', '"""The rule-based math reward', 1)
    reward.write_text(edited.replace("\n\n\n", "\n\n\n# a new comment\n", 1))
    assert reward.read_text() != text
    assert code_versions.changed() == {}
    _edit_the_reward(source_copy)
    assert set(code_versions.changed()) == {"probe", "select_problems"}
