"""probe.calibration: a sweep's verdict and plan read a curves decision.json at the probe's budget."""

import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.calibration import Calibration
from pipelines.curves import Definitions, measure_curves, read_curves
from pipelines.curves_report import write
from pipelines.preflight import load_sweep, validate_sweep
from pipelines.sweep import bundled_sweep
from test_curves import crossing, write_wandb

ROOT = Path(__file__).resolve().parents[1]


def _calibration(tmp: Path) -> Path:
    """The crossing curves: gain and slope order the pair right from step 10, the last eval from
    step 80, the area never (budgets 10, 20, 40, 80)."""
    groups = read_curves([write_wandb(tmp / "cross.csv", "acc", crossing())])
    json_path, _ = write(measure_curves(groups, Definitions(budgets=[10, 20, 40, 80], samples=100)),
                         tmp / "calibration", ["cross.csv"])
    return json_path


def _sweep(tmp: Path, calibration: str, score: str = "final_acc") -> Path:
    data = yaml.safe_load(bundled_sweep("toy-smoke").read_text())
    data["probe"]["calibration"] = calibration
    data.setdefault("report", {})["score"] = score
    path = tmp / "sweeps" / "smoke.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_calibration_is_read_at_the_probes_budget(tmp_path):
    calibration = Calibration.load(_calibration(tmp_path))
    assert calibration.at("last", 79)["budget"] == 40 and calibration.at("last", 80)["budget"] == 80
    assert calibration.cheapest("last", 0.9)["budget"] == 80 and calibration.cheapest("auc", 0.9) is None
    assert calibration.sentence("final_acc", 100) == (
        "On the calibration curves (decision.json, signal 'last' for final_acc), a 80-step probe ordered "
        "1.00 [1.00, 1.00] of 1 separable pairs as their ends did (this probe: 100 steps).")
    assert "no budget as short as this probe's 4 steps was measured (the shortest: 10)" in \
        calibration.sentence("final_acc", 4)


def test_a_sweeps_calibration_resolves_beside_it_and_is_checked(tmp_path):
    json_path = _calibration(tmp_path)
    good = _sweep(tmp_path, "../calibration/decision.json")
    assert validate_sweep(good) == []
    assert load_sweep(good).probe.calibration == str(json_path.resolve())
    missing = _sweep(tmp_path, "nowhere.json")
    assert validate_sweep(missing) == [f"probe.calibration: file not found: {tmp_path / 'sweeps' / 'nowhere.json'}"]
    (tmp_path / "sweeps" / "other.json").write_text('{"budgets": []}')
    assert "no rows and definitions" in validate_sweep(_sweep(tmp_path, "other.json"))[0]
    (tmp_path / "sweeps" / "broken.json").write_text("{")
    assert "not JSON" in validate_sweep(_sweep(tmp_path, "broken.json"))[0]


def _plan(sweep: Path, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "plan", str(sweep), "-w", str(tmp / "ws")],
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_plan_warns_when_the_probe_is_shorter_than_an_accurate_budget(tmp_path):
    _calibration(tmp_path)
    # toy-smoke probes 4 steps; the gain ordered the pair right from 10 steps on
    short = _plan(_sweep(tmp_path, "../calibration/decision.json", score="final_gain"), tmp_path)
    assert short.returncode == 0, short.stderr
    assert ("the probe (4 steps) is shorter than the cheapest budget that reached decision accuracy 0.90 on "
            "decision.json (signal 'gain'): 10 steps") in " ".join(short.stderr.split())
    never = _plan(_sweep(tmp_path, "../calibration/decision.json", score="auc_acc"), tmp_path)
    assert "no budget reached decision accuracy 0.90" in " ".join(never.stderr.split())


def test_the_verdict_says_what_the_calibration_implies(tmp_path):
    import numpy as np

    from pipelines.ranking import ProbeRun
    from pipelines.report import build
    from pipelines.results import StageInfo, SweepResults

    probes = [ProbeRun(r, s, f"{r}{s}", "h", [0, 40, 80], np.full((3, 20), acc), [str(i) for i in range(20)])
              for r, acc in (("cot", 0.6), ("short", 0.2)) for s in range(2)]
    spec = {"name": "long", "steps": 80, "prompts_per_step": 8, "group_size": 4}
    info = {p.key: StageInfo("probe", p.key, {"kind": "probe"}, tmp_path, {"config": {"spec": spec}}, {})
            for p in probes}
    doc, _ = build(SweepResults("s", probes, info, {}, [], None), "t", score="final_acc", samples=100,
                   n_rollouts=0, calibration=_calibration(tmp_path))
    verdict = next(text for kind, text in doc.blocks if kind == "p")
    assert verdict.startswith("**cot** ranks first")
    assert verdict.endswith("a 80-step probe ordered 1.00 [1.00, 1.00] of 1 separable pairs as their ends did.")


def test_a_calibration_in_tokens_is_not_read_at_a_length_in_steps(tmp_path):
    from test_curves import _long_with_counts

    groups = read_curves([_long_with_counts(tmp_path / "t.jsonl", {"a": 1000.0, "b": 100.0})])
    json_path, _ = write(measure_curves(groups, Definitions(samples=50)), tmp_path / "calibration", ["t.jsonl"])
    calibration = Calibration.load(json_path)
    assert calibration.unit == "tokens" and calibration.budget(40, 64) is None
    assert calibration.sentence("final_acc", None).endswith(
        "budgets are in tokens, which this probe's spec does not fix: not read.")
