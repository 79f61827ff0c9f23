"""Stage-run locks: owner records, takeover of a dead owner's lock, waiting that says what it waits for."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipelines import locks
from pipelines.locks import Busy, hold, lock_states, read_owner


def test_a_held_lock_names_its_owner_and_is_released(tmp_path):
    path = tmp_path / "curate-abc.lock"
    with hold(path, "curate web"):
        owner = read_owner(path)
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert lock_states(tmp_path) == [("curate-abc", owner, True)]
        with pytest.raises(Busy, match=rf"curate web is held by pid {os.getpid()} on "):
            with hold(path, "curate web", wait=False):
                pass
    assert not path.exists()


def test_the_lock_of_a_dead_process_is_taken_over_and_logged(tmp_path):
    path = tmp_path / "midtrain-k.lock"
    # a process that takes the lock and dies without releasing it (kill -9)
    code = f"import os; from pipelines.locks import hold; from pathlib import Path; h = hold(Path({str(path)!r}), 'x'); h.__enter__(); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    dead = read_owner(path)
    assert dead["pid"] != os.getpid()
    assert lock_states(tmp_path) == [("midtrain-k", dead, False)]
    lines = []
    with hold(path, "midtrain stable", wait=False, log=lines.append):
        assert read_owner(path)["pid"] == os.getpid()
    assert lines == [f"midprobe: midtrain stable: taking over the lock of {locks.describe(dead)}, which is gone"]


def test_a_lock_from_another_host_is_taken_over_once_its_heartbeat_is_stale(tmp_path, monkeypatch):
    path = tmp_path / "probe-k.lock"
    other = {"pid": os.getpid(), "host": "node-7", "process_start": 0, "taken": time.time(),
             "heartbeat": time.time(), "token": "t"}
    path.write_text(json.dumps(other))
    with pytest.raises(Busy, match="held by pid .* on node-7"):  # fresh heartbeat: alive
        with hold(path, "probe", wait=False):
            pass
    path.write_text(json.dumps({**other, "heartbeat": time.time() - locks.STALE_SECONDS - 1}))
    with hold(path, "probe", wait=False, log=lambda line: None):
        assert read_owner(path)["host"] == socket.gethostname()


def test_an_empty_lock_file_of_an_older_midprobe_does_not_block(tmp_path):
    path = tmp_path / "tokenizer-k.lock"
    path.write_text("")
    with hold(path, "tokenizer", wait=False, log=lambda line: None):
        assert read_owner(path)["pid"] == os.getpid()


def test_the_heartbeat_refreshes_and_a_waiter_says_what_it_waits_for(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_SECONDS", 0.2)
    monkeypatch.setattr(locks, "POLL_SECONDS", 0.1)
    monkeypatch.setattr(locks, "WAIT_REPORT_SECONDS", 0.3)
    path = tmp_path / "curate-k.lock"
    release = threading.Event()

    def holder():
        with hold(path, "curate web"):
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    while not path.exists():
        time.sleep(0.01)
    first = read_owner(path)["heartbeat"]
    time.sleep(0.5)
    assert read_owner(path)["heartbeat"] > first
    lines = []
    threading.Timer(0.8, release.set).start()
    with hold(path, "curate web", log=lines.append):
        pass
    thread.join()
    assert len(lines) >= 2 and all(line.startswith("midprobe: waiting for curate web, held by pid") for line in lines)
    assert lines[-1].endswith("s") and "waited" in lines[-1]
