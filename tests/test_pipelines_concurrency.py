"""Two orchestrators on one workspace, and kill -9 of an orchestrator mid-sweep."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from pipelines.sweep import bundled_sweep

SMOKE = str(bundled_sweep("toy-smoke"))
ENV = {**os.environ, "WANDB_MODE": "offline", "MIDPROBE_WANDB": "0"}


def _run(workspace: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", SMOKE, "--workspace", str(workspace),
                             "--parallel", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, **kw)


def _published(workspace: Path) -> dict[str, float]:
    return {str(p.parent.relative_to(workspace)): p.stat().st_mtime
            for p in workspace.glob("*/*/manifest.json")}


def test_two_runs_at_once_train_nothing_twice(tmp_path):
    procs = [_run(tmp_path), _run(tmp_path)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    executed = [line for _, err in outputs for line in err.splitlines()
                if line.startswith("✓") and not line.rstrip().endswith("another process)")]
    labels = [line[1:].rsplit("  ", 1)[0].strip() for line in executed]
    db = sqlite3.connect(tmp_path / "index.sqlite")
    done = db.execute("SELECT COUNT(*) FROM runs WHERE status='done' AND stage != 'external'").fetchone()[0]
    assert len(labels) == len(set(labels)) == done  # each stage run executed by exactly one process
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert any("another process" in err for _, err in outputs)


def test_kill_9_orchestrator_then_rerun_finishes_without_redoing(tmp_path):
    proc = _run(tmp_path, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not list(tmp_path.glob("midtrain/*/manifest.json")):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the orchestrator and its stage workers, mid-sweep
    proc.wait()
    before = _published(tmp_path)
    assert before and not (tmp_path / "reports").exists()

    again = _run(tmp_path)
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    after = _published(tmp_path)
    assert all(after[ref] == mtime for ref, mtime in before.items())  # finished runs untouched
    assert not any(line.split()[-1] in before for line in err.splitlines() if line.startswith("▶"))
    assert Path(out.strip().splitlines()[-1]).is_file()
    assert not list(tmp_path.glob("*/.*.partial"))
