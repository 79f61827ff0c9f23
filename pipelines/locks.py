"""Stage-run locks that recover from their owner's death, on one host or across hosts.

A lock is a file whose content names its owner (pid, host, process start time, when it was
taken) and a heartbeat that a thread of the owner refreshes every HEARTBEAT_SECONDS. It is
created with ``os.link`` of a complete file (atomic, and safe on NFS, where ``flock`` is not),
so a lock file is never seen half-written. A process that finds a lock whose owner is gone
takes it over and logs that: on the same host the owner's pid is dead (or is another process
now); on another host its heartbeat is older than STALE_SECONDS (hosts' clocks are assumed
NTP-synchronised, as on any cluster). Unlike an ``flock``, the lock is not inherited by the
owner's children, so a leftover helper process never holds it.

Every change to an existing lock file — a heartbeat's rewrite, a takeover's removal, a release —
is a compare-and-swap on the owner's token: it happens while holding the lock's guard file
(``<lock>.guard``, also created by ``os.link``, so exclusive on NFS as on a local disk), after
re-reading the owner under that guard, and only if the token read is the one expected. A lock
file appears otherwise only by ``os.link`` where none exists. So a heartbeat never rewrites a lock
another process has taken over, and a release never removes another's lock. What this rests on:
``link(2)`` failing with EEXIST on the server when the name exists, and close-to-open consistency
(an ``open`` after another client's change sees it: Linux NFS clients' default; not under the
``nocto`` mount option). What it does not cover: a guard's holder that stalls for more than
STALE_SECONDS inside its few-millisecond critical section (a process stopped there, a host
frozen) has its guard taken as abandoned and removed; its write may then land after a takeover.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import psutil

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0
WAIT_REPORT_SECONDS = 30.0  # a waiting process says what it waits for this often
POLL_SECONDS = 1.0
GUARD_POLL_SECONDS = 0.005  # a guard is held for one read and one write


class Busy(Exception):
    """Another live process holds this lock; the message says who and since when."""


def _process_start(pid: int) -> float | None:
    try:
        process = psutil.Process(pid)
        # killed but not yet reaped (an orphan waits for init to reap it): it holds nothing
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def owner_alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return time.time() - owner.get("heartbeat", 0) < STALE_SECONDS
    started = _process_start(owner.get("pid", -1))
    # a pid the kernel has given to another process since is as dead as a missing one
    return started is not None and abs(started - owner.get("process_start", started)) < 1.0


def read_owner(path: Path) -> dict | None:
    """The lock's owner record; {} for a lock file without one (left by an older midprobe)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    with contextlib.suppress(ValueError):
        owner = json.loads(text)
        if isinstance(owner, dict) and "pid" in owner:
            return owner
    return {}


def describe(owner: dict) -> str:
    if not owner:
        return "an unknown owner"
    since = time.strftime("%H:%M:%S", time.localtime(owner["taken"]))
    return f"pid {owner['pid']} on {owner['host']} (since {since})"


def _write_new(path: Path, owner: dict) -> bool:
    tmp = path.with_name(f"{path.name}.{owner['token']}.tmp")
    tmp.write_text(json.dumps(owner))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


@contextlib.contextmanager
def _guard(path: Path, patience: float) -> Iterator[bool]:
    """Hold the lock's guard file for a read-compare-write of the lock (yields False when it could
    not be had within `patience` seconds). A guard older than STALE_SECONDS is its holder's
    leftover (it died holding it) and is removed."""
    guard = path.with_name(path.name + ".guard")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex}
    deadline = time.time() + patience
    while not (held := _write_new(guard, me)) and time.time() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - guard.stat().st_mtime > STALE_SECONDS:
                guard.unlink()
        time.sleep(GUARD_POLL_SECONDS)
    try:
        yield held
    finally:
        if held and _owned(guard, me):
            guard.unlink()


def _take_over(path: Path, stale: dict) -> bool:
    """Remove a dead owner's lock, unless someone else already replaced it or its owner's
    heartbeat changed it since it was read."""
    with _guard(path, patience=POLL_SECONDS) as held:
        if not held or read_owner(path) != stale:
            return False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return True


def _owned(path: Path, owner: dict) -> bool:
    return (read_owner(path) or {}).get("token") == owner["token"]


class _Heartbeat(threading.Thread):
    def __init__(self, path: Path, owner: dict):
        super().__init__(daemon=True, name="midprobe-lock-heartbeat")
        self.path, self.owner, self.stopped = path, owner, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            with _guard(self.path, patience=HEARTBEAT_SECONDS / 2) as held:
                if not held:
                    continue  # the next beat tries again
                if not _owned(self.path, self.owner):
                    return  # taken over (we were thought dead); the new owner's record stays
                self.owner["heartbeat"] = time.time()
                tmp = self.path.with_name(f"{self.path.name}.{self.owner['token']}.tmp")
                tmp.write_text(json.dumps(self.owner))
                os.replace(tmp, self.path)


@contextlib.contextmanager
def hold(path: Path, what: str, wait: bool = True, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock file `path` (guarding `what`) for the duration of the block.

    Without `wait`, a lock with a live owner raises Busy at once; with it, the caller waits and
    says every WAIT_REPORT_SECONDS what it waits for and for how long.
    """
    now = time.time()
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
             "taken": now, "heartbeat": now, "token": uuid.uuid4().hex}
    first_wait = reported = None
    while not _write_new(path, owner):
        current = read_owner(path)
        if current is None:  # released in between
            continue
        if not owner_alive(current):
            if _take_over(path, current):
                log(f"midprobe: {what}: taking over the lock of {describe(current)}, which is gone")
            continue
        if not wait:
            raise Busy(f"{what} is held by {describe(current)}")
        first_wait = first_wait or time.time()
        if reported is None or time.time() - reported >= WAIT_REPORT_SECONDS:
            reported = time.time()
            log(f"midprobe: waiting for {what}, held by {describe(current)}; "
                f"waited {reported - first_wait:.0f}s")
        time.sleep(POLL_SECONDS)
        owner["taken"] = owner["heartbeat"] = time.time()
    heartbeat = _Heartbeat(path, owner)
    heartbeat.start()
    try:
        yield
    finally:
        heartbeat.stopped.set()
        heartbeat.join()
        # patient: a guard left by a dead holder is removed after STALE_SECONDS
        with _guard(path, patience=2 * STALE_SECONDS) as held:
            if held and _owned(path, owner):
                path.unlink()


def lock_states(folder: Path) -> list[tuple[str, dict, bool]]:
    """(name, owner, owner alive) of every stage-run lock in `folder`."""
    states = []
    for path in sorted(folder.glob("*.lock")):
        owner = read_owner(path)
        if owner is not None and path.name != "index.lock":
            states.append((path.stem, owner, bool(owner) and owner_alive(owner)))
    return states
