"""kill -9 of the orchestrator at each stage of the smoke sweep: within 10 s no process of the
killed run is left (datatrove and megatron Managers, resource trackers, stage workers), and an
immediate re-run, with no cleanup by hand, finishes with the outputs of an uninterrupted run."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pipelines.sweep import bundled_sweep

# The smoke sweep with probes long enough (16 GRPO steps) to be caught running: its own
# 4-step probes finish within WORKED_SECONDS on an idle machine.
SWEEP = yaml.safe_load(bundled_sweep("toy-smoke").read_text())
SWEEP["probe"]["spec"] = {"base": SWEEP["probe"]["spec"], "steps": 16}
# and decay branches of 40 steps: their 10, now that a stage exports once, end within it too
for recipe in SWEEP["recipes"].values():
    recipe["decay"]["tokens"] *= 4
# the label of a stage run that is running when the orchestrator is killed
KILL_POINTS = {"curation": "curate ", "pretraining": "pretrain base", "stable": " stable",
               "decay": " decay", "probe": "probe "}
WORKED_SECONDS = 3.0  # into the stage run, so that it has started its helpers
# metrics that measure time, not results
TIMING = ("timing", "throughput", "seconds", "time/", "perf/")


def _run(workspace: Path, mark: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "MIDPROBE_WANDB": "0", "KILL_TEST_MARK": mark}
    sweep = log.parent / "toy-smoke-kill.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(sweep), "--workspace", str(workspace),
                             "--parallel", "2"], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _marked(mark: str) -> list[int]:
    """Live processes started under the run (zombies have no environment left)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if f"KILL_TEST_MARK={mark}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(int(pid))
        except OSError:
            pass
    return found


def _outputs(workspace: Path) -> dict[str, object]:
    """What each published stage run produced, without timings."""
    outputs: dict[str, object] = {}
    for manifest in sorted(workspace.glob("*/*/manifest.json")):
        run = manifest.parent
        ref = str(run.relative_to(workspace))
        if (run / "curation.json").is_file():
            c = json.loads((run / "curation.json").read_text())
            outputs[ref] = {k: v for k, v in c.items() if k != "seconds"}
        elif (run / "metrics.jsonl").is_file():
            outputs[ref] = [{"step": r["step"], **{k: v for k, v in r["data"].items()
                                                   if not any(t in k for t in TIMING)}}
                            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
        else:
            outputs[ref] = sorted(p.name for p in run.iterdir())
    return outputs


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("uninterrupted")
    proc = _run(workspace, uuid.uuid4().hex, workspace.parent / "uninterrupted.log")
    assert proc.wait(timeout=1800) == 0, (workspace.parent / "uninterrupted.log").read_text()[-3000:]
    return _outputs(workspace)


def _wait_for_stage(workspace: Path, label_part: str, proc: subprocess.Popen, timeout: float = 1200) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (workspace / "index.sqlite").is_file():
            db = sqlite3.connect(workspace / "index.sqlite", timeout=30)
            try:
                rows = db.execute("SELECT label, started FROM runs WHERE status='running'").fetchall()
            except sqlite3.OperationalError:
                rows = []
            finally:
                db.close()
            for label, started in rows:
                if label_part in label and started and time.time() - started > WORKED_SECONDS:
                    return label
        time.sleep(0.3)
    raise AssertionError(f"no stage run '{label_part}' ran (orchestrator exit code {proc.poll()})")


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_of_the_orchestrator_leaves_no_process_and_a_rerun_finishes(point, tmp_path, uninterrupted):
    workspace, mark = tmp_path / "ws", uuid.uuid4().hex
    proc = _run(workspace, mark, tmp_path / "killed.log")
    label = _wait_for_stage(workspace, KILL_POINTS[point], proc)
    assert len(_marked(mark)) > 2  # the orchestrator, its reaper, stage workers and what they started
    os.kill(proc.pid, signal.SIGKILL)  # the orchestrator alone: the rest must follow it
    proc.wait()
    deadline = time.time() + 10
    while _marked(mark) and time.time() < deadline:
        time.sleep(0.2)
    assert _marked(mark) == [], f"left alive after killing the orchestrator during '{label}'"

    started = time.time()
    again = _run(workspace, uuid.uuid4().hex, tmp_path / "rerun.log")
    assert again.wait(timeout=1800) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    assert "waiting:" not in (tmp_path / "rerun.log").read_text()  # nothing held by the dead run blocked it
    assert _outputs(workspace) == uninterrupted
    assert not list(workspace.glob("*/.*.partial"))
    print(f"{point}: killed during '{label}', re-run took {time.time() - started:.0f}s")
