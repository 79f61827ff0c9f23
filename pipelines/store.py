"""The run store: content-keyed stage runs published by atomic rename, indexed in SQLite.

A stage run lives in ``<workspace>/<stage>/<key>/`` once finished. While it
works it lives in ``<stage>/.<key>.partial/``, which is also where it resumes
after a crash: nothing with a ``.partial`` suffix is ever read as finished,
and the final rename is atomic on POSIX file systems. One process at a time
works on a stage run (an ``flock`` per key), so two ``midprobe run`` processes
on one workspace never train the same thing twice.
"""

from __future__ import annotations

import contextlib
import functools
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from pipelines import locks
from runfiles import METRICS_FILE, append_metrics, atomic_write, fsync_dir, read_metrics

if TYPE_CHECKING:
    from pipelines.run_configs import RunConfig

MANIFEST = "manifest.json"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    stage TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL,
    label TEXT, config TEXT, inputs TEXT, host TEXT, pid INTEGER,
    started REAL, finished REAL, cpu_seconds REAL, error TEXT,
    PRIMARY KEY (stage, key));
CREATE TABLE IF NOT EXISTS metrics (
    stage TEXT NOT NULL, key TEXT NOT NULL, step INTEGER NOT NULL,
    name TEXT NOT NULL, value REAL,
    PRIMARY KEY (stage, key, step, name));
CREATE TABLE IF NOT EXISTS sweep_members (
    sweep TEXT NOT NULL, stage TEXT NOT NULL, key TEXT NOT NULL, role TEXT NOT NULL,
    PRIMARY KEY (sweep, stage, key, role));
"""

_VERSIONED_PACKAGES = ("midprobe", "torch", "megatron-core", "datatrove", "verl",
                       "transformers", "math-verify")


# Metrics a stage reports through its callback, kept in its run directory by a worker that
# does not own the index, for the orchestrator to ingest with metrics.jsonl.
TRACKED_METRICS = "tracked_metrics.jsonl"


class IndexNotOwned(RuntimeError):
    """A worker's store touched index.sqlite, which only the orchestrator may open."""


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object that ignores dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class StageRun:
    """One node of the stage DAG: what to run, on what, and where it lands.

    ``config`` is the resolved configuration: the planner's typed config of the stage
    (`pipelines.run_configs`), or any JSON-able mapping (the store itself only needs its JSON).
    ``inputs`` maps an input role to the upstream StageRun it consumes. The key hashes the
    config's canonical JSON and the inputs' keys, so a changed input changes exactly its
    dependants' keys.
    """

    stage: str
    config: "RunConfig | dict"
    inputs: dict[str, "StageRun"] = field(default_factory=dict)
    label: str = ""

    @functools.cached_property
    def canonical_config(self) -> dict:
        """The config as keys, manifests and the index hold it."""
        return self.config if isinstance(self.config, dict) else self.config.canonical()

    @functools.cached_property
    def key(self) -> str:
        return stable_hash({"stage": self.stage, "config": self.canonical_config,
                            "inputs": {role: run.key for role, run in sorted(self.inputs.items())}})

    @property
    def ref(self) -> str:
        return f"{self.stage}/{self.key}"

    def __hash__(self) -> int:
        return hash(self.ref)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StageRun) and self.ref == other.ref


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def cpu_capability() -> str | None:
    """The instruction set torch chose its CPU kernels for (AVX2, AVX512, ...), in a process that
    did float work with torch; None in one that never imported it. Two machines that choose
    different kernels round float32 differently, so one stage key can give other weights there."""
    torch = sys.modules.get("torch")
    return torch.backends.cpu.get_cpu_capability() if torch is not None else None


def accelerator() -> dict | None:
    """The CUDA device a stage's process used (name, compute capability, CUDA and cuDNN versions):
    cpu_capability says nothing of GPU kernels. None in a process that never initialised CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "capability": f"{major}.{minor}",
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


class RunStore:
    """A workspace. With `index=False` (a stage worker: another process, maybe on another
    host, over a shared filesystem where SQLite's locking does not hold) it never opens
    index.sqlite: a run's status and metrics live in its directory (manifest.json,
    metrics.jsonl, tracked_metrics.jsonl) and the orchestrator ingests them (`ingest`)."""

    def __init__(self, workspace: Path, index: bool = True):
        self.workspace = Path(workspace).resolve()
        self.workspace.mkdir(parents=True, exist_ok=True)
        (self.workspace / "locks").mkdir(exist_ok=True)
        self.db_path = self.workspace / "index.sqlite"
        self.index = index
        if not index:
            return
        # Switching to WAL takes an exclusive lock that SQLite's busy handler does not wait for:
        # two processes opening a new workspace at once made one fail with "database is locked".
        # WAL is a persistent property of the file, so it is set once, under a file lock.
        with open(self.workspace / "locks" / "index.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            db = sqlite3.connect(self.db_path, timeout=60)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                db.commit()
            finally:
                db.close()

    # -- SQLite -------------------------------------------------------------
    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        if not self.index:
            raise IndexNotOwned(f"{self.db_path}: a stage worker never opens the index")
        db = sqlite3.connect(self.db_path, timeout=60)
        db.execute("PRAGMA busy_timeout=60000")
        try:
            with db:
                yield db
        finally:
            db.close()

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._db() as db:
            db.row_factory = sqlite3.Row
            return db.execute(sql, params).fetchall()

    # -- paths --------------------------------------------------------------
    def path(self, run: StageRun) -> Path:
        return self.workspace / run.stage / run.key

    def partial_path(self, run: StageRun) -> Path:
        return self.partial_dir(run.stage, run.key)

    def partial_dir(self, stage: str, key: str) -> Path:
        return self.workspace / stage / f".{key}.partial"

    def is_done(self, run: StageRun) -> bool:
        return (self.path(run) / MANIFEST).is_file()

    def manifest(self, run: StageRun) -> dict:
        return json.loads((self.path(run) / MANIFEST).read_text())

    # -- membership (which runs a sweep uses, and as what) -------------------
    def set_members(self, sweep: str, roles: dict[StageRun, list[dict]]) -> None:
        """Make a sweep's membership exactly this plan (an edited sweep drops its old runs)."""
        with self._db() as db:
            db.execute("DELETE FROM sweep_members WHERE sweep=?", (sweep,))
            for run, run_roles in roles.items():
                db.execute("INSERT OR IGNORE INTO runs(stage, key, status, label, config, inputs) "
                           "VALUES (?,?,?,?,?,?)",
                           (run.stage, run.key, "pending", run.label, json.dumps(run.canonical_config),
                            json.dumps({r: i.ref for r, i in run.inputs.items()})))
                db.executemany("INSERT OR IGNORE INTO sweep_members VALUES (?,?,?,?)",
                               [(sweep, run.stage, run.key, json.dumps(role, sort_keys=True))
                                for role in run_roles])

    def members(self, sweep: str, stage: str | None = None) -> list[tuple[str, str, dict]]:
        sql = "SELECT stage, key, role FROM sweep_members WHERE sweep=?"
        params: tuple = (sweep,)
        if stage:
            sql, params = sql + " AND stage=?", (sweep, stage)
        return [(r["stage"], r["key"], json.loads(r["role"])) for r in self.query(sql, params)]

    def previous(self, run: StageRun, sweep: str) -> dict | None:
        """The resolved config and input refs of the last other run of `run`'s stage under its
        label (this sweep's own first): what `midprobe plan` compares a run to be run against."""
        rows = self.query(
            "SELECT r.config, r.inputs FROM runs r LEFT JOIN sweep_members m "
            "ON m.stage=r.stage AND m.key=r.key AND m.sweep=? "
            "WHERE r.stage=? AND r.label=? AND r.key!=? AND r.config IS NOT NULL "
            "ORDER BY m.sweep IS NULL, COALESCE(r.finished, r.started, 0) DESC LIMIT 1",
            (sweep, run.stage, run.label, run.key))
        return {"config": json.loads(rows[0]["config"]), "inputs": json.loads(rows[0]["inputs"] or "{}")} \
            if rows else None

    def _set_status(self, run: StageRun, status: str, **fields: Any) -> None:
        if not self.index:  # the orchestrator records it
            return
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO runs(stage, key, status, label, config, inputs) "
                       "VALUES (?,?,?,?,?,?)",
                       (run.stage, run.key, status, run.label, json.dumps(run.canonical_config),
                        json.dumps({r: i.ref for r, i in run.inputs.items()})))
            db.execute(f"UPDATE runs SET status=?{', ' + cols if cols else ''} WHERE stage=? AND key=?",
                       (status, *fields.values(), run.stage, run.key))

    def record_metrics(self, run: StageRun, step: int, metrics: dict[str, float]) -> None:
        if not self.index:
            append_metrics(self.partial_path(run) / TRACKED_METRICS, step, metrics)
            return
        rows = [(run.stage, run.key, int(step), name, float(value))
                for name, value in metrics.items() if isinstance(value, (int, float))]
        with self._db() as db:
            db.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?)", rows)

    def metrics(self, stage: str, key: str) -> dict[str, list[tuple[int, float]]]:
        series: dict[str, list[tuple[int, float]]] = {}
        for row in self.query("SELECT step, name, value FROM metrics WHERE stage=? AND key=? "
                              "ORDER BY step", (stage, key)):
            series.setdefault(row["name"], []).append((row["step"], row["value"]))
        return series

    # -- execution ----------------------------------------------------------
    def lock_path(self, run: StageRun) -> Path:
        return self.workspace / "locks" / f"{run.stage}-{run.key}.lock"

    def lock(self, run: StageRun, wait: bool = True):
        """One process per stage run; a lock whose owner died is taken over (pipelines.locks)."""
        return locks.hold(self.lock_path(run), run.label or run.ref, wait,
                          log=lambda line: print(line, file=sys.stderr, flush=True))

    def execute(self, run: StageRun, work, *, seed: int | None = None, wait: bool = True) -> tuple[Path, bool]:
        """Run ``work(partial_dir)`` unless the run is already published.

        With ``wait=False`` a run that another process is working on raises Busy
        instead of blocking, so an orchestrator can do other ready work meanwhile.

        Returns the published path and whether it was reused from the store.
        ``work`` may find a partial directory left by a crashed attempt and
        resume from it; on failure the partial directory is kept for that.
        """
        if self.is_done(run):
            return self.path(run), True
        with self.lock(run, wait):
            if self.is_done(run):  # another process finished it while we waited
                return self.path(run), True
            partial = self.partial_path(run)
            partial.mkdir(parents=True, exist_ok=True)
            started, cpu0 = time.time(), _cpu_seconds()
            self._set_status(run, "running", host=socket.gethostname(), pid=os.getpid(),
                             started=started, error=None)
            try:
                work(partial)
            except BaseException as exc:
                self._set_status(run, "failed", finished=time.time(), error=f"{type(exc).__name__}: {exc}")
                raise
            cpu_seconds = _cpu_seconds() - cpu0
            manifest = {
                "stage": run.stage, "key": run.key, "label": run.label, "config": run.canonical_config,
                "inputs": {role: inp.ref for role, inp in run.inputs.items()},
                "versions": library_versions(), "seed": seed, "host": socket.gethostname(),
                "platform": platform.platform(),
                "cpu_capability": cpu_capability(), "accelerator": accelerator(), "started": started, "finished": time.time(),
                "wall_seconds": time.time() - started, "cpu_seconds": cpu_seconds,
            }
            atomic_write(partial / MANIFEST, json.dumps(manifest, indent=2, default=str))
            final = self.path(run)
            if final.exists():  # a directory without manifest: debris of an older layout
                shutil.rmtree(final)
            os.rename(partial, final)
            fsync_dir(final.parent)
            if self.index:
                self.ingest(run)
            return final, False

    def status(self, run: StageRun) -> str | None:
        rows = self.query("SELECT status FROM runs WHERE stage=? AND key=?", (run.stage, run.key))
        return rows[0]["status"] if rows else None

    def mark_submitted(self, run: StageRun) -> None:
        """A worker works on it for this orchestrator (alive while this process is)."""
        self._set_status(run, "running", host=socket.gethostname(), pid=os.getpid(),
                         started=time.time(), error=None)

    def mark_failed(self, run: StageRun, error: str) -> None:
        self._set_status(run, "failed", finished=time.time(), error=error)

    def ingest(self, run: StageRun) -> None:
        """Index a published run from its directory: status and timings from its manifest, its
        metrics files (idempotent; the orchestrator's half of a worker's publish)."""
        manifest = self.manifest(run)
        self._set_status(run, "done", host=manifest.get("host"), started=manifest.get("started"),
                         finished=manifest.get("finished"), cpu_seconds=manifest.get("cpu_seconds"),
                         error=None)
        self.ingest_metrics(run)

    def ingest_metrics(self, run: StageRun) -> None:
        """Copy a published run's metrics files into the index (idempotent)."""
        records = read_metrics(self.path(run) / TRACKED_METRICS) + read_metrics(self.path(run) / METRICS_FILE)
        with self._db() as db:
            for record in records:
                db.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?)",
                               [(run.stage, run.key, int(record["step"]), name, float(value))
                                for name, value in record["data"].items()
                                if isinstance(value, (int, float))])

    def reconcile(self) -> None:
        """Mark runs whose process died without a word (kill -9) as interrupted."""
        for row in self.query("SELECT stage, key, host, pid FROM runs WHERE status='running'"):
            alive = row["host"] == socket.gethostname() and row["pid"] and _pid_alive(row["pid"])
            if not alive:
                with self._db() as db:
                    db.execute("UPDATE runs SET status='interrupted' WHERE stage=? AND key=? "
                               "AND status='running'", (row["stage"], row["key"]))


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (datatrove workers, torch)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
