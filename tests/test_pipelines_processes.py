"""Process containment: a dying stage worker fails only its own stage run, and everything an
orchestrator started (workers, what they fork, what leaves their process group) dies with it."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipelines.errors import StageFailed
from pipelines.execute import LocalBackend
from pipelines.processes import TAGS_ENV


def _marked(mark: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if f"MARK={mark}".encode() in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_a_dying_worker_fails_only_its_own_run_and_takes_what_it_started_along(monkeypatch):
    mark = uuid.uuid4().hex
    monkeypatch.setenv("MARK", mark)  # inherited by the workers and everything they start
    backend = LocalBackend(2)
    try:
        slow = backend.call("slow run", time.sleep, 3)
        # the worker starts a process in a session of its own (as torchrun does its ranks), then dies
        dying = backend.call("dying run", os.system, "setsid sleep 300 & sleep 0.5; kill -ABRT $PPID; sleep 300")
        with pytest.raises(StageFailed, match=r"dying run: its worker process \d+ died \(killed by SIGABRT\)"):
            dying.result(timeout=60)
        assert slow.result(timeout=60) is None  # the other in-flight run went on
        assert _sleeps(mark) == []  # what the dead worker started went with it
        assert backend.call("next run", os.getpid).result(timeout=60) > 0  # the slot has a new worker
    finally:
        backend.close()


def _sleeps(mark: str) -> list[str]:
    commands = []
    for pid in _marked(mark):
        with contextlib.suppress(OSError):
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return [c for c in commands if "sleep" in c]


ORCHESTRATOR = """
import subprocess, sys, time
from pipelines.execute import LocalBackend
if __name__ == "__main__":
    backend = LocalBackend(1)
    # a child in the worker's process group, and one that leaves it for a session of its own
    backend.call("run", subprocess.run, ["sh", "-c", "setsid sleep 300 & sleep 300"])
    print("started", flush=True)
    time.sleep(300)
"""


def test_kill_9_of_the_orchestrator_ends_every_process_it_started(tmp_path):
    mark = uuid.uuid4().hex
    script = tmp_path / "orchestrator.py"
    script.write_text(ORCHESTRATOR)
    env = {**os.environ, "MARK": mark}
    env.pop(TAGS_ENV, None)
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    deadline = time.time() + 60
    while len(_marked(mark)) < 5 and time.time() < deadline:  # orchestrator, worker, sh, 2 sleeps
        time.sleep(0.2)
    assert len(_marked(mark)) >= 5
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while _marked(mark) and time.time() < deadline:
        time.sleep(0.2)
    assert _marked(mark) == []
