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


RACE_ROUNDS = 30


def _owner(token: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "process_start": 0, "taken": time.time(),
            "heartbeat": time.time(), "token": token}


def _beating_owner(path, barrier):
    """Takes the lock each round and heartbeats it as fast as it can, so that a takeover always
    lands in the middle of a heartbeat's read-then-write."""
    locks.HEARTBEAT_SECONDS = 0.0
    for r in range(RACE_ROUNDS):
        owner = _owner(f"A{r}")
        assert locks._write_new(path, owner)
        beat = locks._Heartbeat(path, owner)
        beat.start()
        barrier.wait(30)  # the taker takes over now
        barrier.wait(30)  # the taker has watched its lock
        beat.stopped.set()
        beat.join(30)
        barrier.wait(30)  # no heartbeat runs any more
        barrier.wait(30)  # the taker has removed the lock


def _taker(path, barrier, lost):
    """Each round: takes the lock over (as from an owner thought dead), then watches that it stays
    its own for 50 ms."""
    for r in range(RACE_ROUNDS):
        barrier.wait(30)
        deadline = time.time() + 20
        while not locks._take_over(path, read_owner(path) or {}):
            assert time.time() < deadline, "no takeover in 20 s"
        mine = _owner(f"B{r}")
        kept = locks._write_new(path, mine)  # False: the old owner's heartbeat re-created its lock
        watch_until = time.time() + 0.05
        while kept and time.time() < watch_until:
            kept = (read_owner(path) or {}).get("token") == mine["token"]
        lost.value += not kept
        barrier.wait(30)
        barrier.wait(30)
        path.unlink(missing_ok=True)
        barrier.wait(30)


def test_a_heartbeat_never_overwrites_a_lock_taken_over_by_another_process(tmp_path):
    """Two processes race: one heartbeats in a tight loop, the other takes its lock over; a
    heartbeat that read its own token just before the takeover must not write it back after."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    path = tmp_path / "probe-race.lock"
    barrier, lost = ctx.Barrier(2), ctx.Value("i", 0)
    processes = [ctx.Process(target=_beating_owner, args=(path, barrier)),
                 ctx.Process(target=_taker, args=(path, barrier, lost))]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    assert [p.exitcode for p in processes] == [0, 0]
    assert lost.value == 0, f"{lost.value} of {RACE_ROUNDS} takeovers overwritten by the old owner's heartbeat"
