"""Executing a plan: a DAG scheduler over futures, with local, Slurm and Ray backends.

Each stage run executes through ``execute_stage_run`` — a top-level, picklable
function — in a worker process (local), a Slurm job (submitit) or a Ray task.
All of them write to the same workspace layout; only the orchestrator opens the
SQLite index (workers may sit on other hosts of a shared filesystem, where SQLite's
locking does not hold) and ingests what each worker left in its run directory.
"""

from __future__ import annotations

import abc
import dataclasses
import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from pipelines.errors import StageFailed
from pipelines.locks import WAIT_REPORT_SECONDS, Busy
from pipelines.plan import Plan
from pipelines.processes import Containment, end_tree, init_worker, worker_tag
from pipelines.stages import STAGES, StageContext
from pipelines.store import TRACKED_METRICS, RunStore, StageRun
from pipelines.tracking import StageTracker
from runfiles import last_metrics
from pipelines.sweep import ExecutorSection


@dataclass(frozen=True)
class Runtime:
    """How a stage run executes; not part of its key (same result anywhere)."""

    workspace: str
    sweep: str
    threads: int = 1
    curation_executor: dict | None = None
    # False under an orchestrator: a run another process holds comes back as Busy, not a wait
    wait_for_locks: bool = True
    # False in the orchestrator's workers: only the orchestrator opens index.sqlite (SQLite's
    # locks do not hold across hosts or on NFS); a worker leaves status and metrics in the
    # run's directory, and the orchestrator ingests them
    owns_index: bool = True


STAGE_LOG = "stage.log"
BUSY_RETRY_SECONDS = 3.0
# metrics shown next to a running stage run in the progress view, first found wins
PROGRESS_METRICS = ("train/loss", "critic/score/mean")


@contextlib.contextmanager
def captured_output(path: Path):
    """Send this process's stdout/stderr (loguru, tqdm, C libraries) to the stage's log file.

    The file lives in the run's directory, so it is published with the run and
    kept beside the partial work when a stage fails.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def artifact_path(store: RunStore, run: StageRun) -> Path:
    return Path(run.config.path) if run.stage == "external" else store.path(run)


def execute_stage_run(run: StageRun, runtime: Runtime) -> tuple[str, bool]:
    """Run one stage run to completion in this process (or reuse it). Picklable entry point."""
    store = RunStore(Path(runtime.workspace), index=runtime.owns_index)
    if run.stage == "external":
        def work(out: Path) -> None:
            (out / "source.json").write_text(json.dumps(run.canonical_config, indent=2))
        path, reused = store.execute(run, work)
        return str(path), reused

    inputs = {role: artifact_path(store, dep) for role, dep in run.inputs.items()}
    missing = [dep.label or dep.ref for dep in run.inputs.values()
               if dep.stage != "external" and not store.is_done(dep)]
    if missing:
        raise StageFailed(f"{run.label}: inputs not finished: {', '.join(missing)}")

    def work(out: Path) -> None:
        import torch

        torch.set_num_threads(runtime.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(runtime.threads))
        with captured_output(out / STAGE_LOG), StageTracker(store, run, runtime.sweep) as tracker:
            STAGES[run.stage](run, inputs, out, StageContext(on_metrics=tracker.log, threads=runtime.threads,
                                                             curation_executor=runtime.curation_executor))

    path, reused = store.execute(run, work, seed=run.canonical_config.get("seed"), wait=runtime.wait_for_locks)
    return str(path), reused


class _Backend(abc.ABC):
    @abc.abstractmethod
    def submit(self, run: StageRun, runtime: Runtime) -> cf.Future:
        """Start ``execute_stage_run(run, runtime)`` somewhere; a future of its result."""

    def close(self) -> None:
        pass

    def abort(self) -> None:
        """The orchestrator is being interrupted. Cluster jobs keep running: they publish
        into the same store, so a later `midprobe run` picks up their results."""
        self.close()


class LocalBackend(_Backend):
    """`parallel` slots, each a one-process pool: a worker that dies (killed, out of memory)
    fails its own stage run only, and its slot gets a fresh worker for the next one. Workers are
    reused across stage runs (imports cost seconds) and contained (`pipelines.processes`):
    whatever a worker starts dies with it, and all of it dies with the orchestrator."""

    def __init__(self, parallel: int):
        self.containment = Containment()
        self.slots: list[_Slot | None] = [None] * parallel

    def submit(self, run, runtime):
        return self.call(run.label, execute_stage_run, run, runtime)

    def call(self, label: str, fn, *args) -> cf.Future:
        """`fn(*args)` in a free slot's worker; a future of its result."""
        index = next(i for i, slot in enumerate(self.slots) if slot is None or slot.idle())
        slot = self.slots[index]
        if slot is None or slot.broken():  # a dead worker's tree was ended when it died
            slot = self.slots[index] = _Slot(self.containment.tag)
        return slot.submit(label, fn, *args)

    def close(self):
        for slot in filter(None, self.slots):
            slot.pool.shutdown(wait=True, cancel_futures=True)
            slot.end()  # what the worker left (a Manager it started, a resource tracker)
        self.containment.close()

    def abort(self):
        # local workers die with us, and so does everything they started (megatron's checkpoint
        # writer, the reward's verifier); what they had written stays in .partial dirs, resumable
        for slot in filter(None, self.slots):
            slot.end()
            slot.pool.shutdown(wait=False, cancel_futures=True)
        self.containment.close()


class _Slot:
    def __init__(self, tag: str):
        self.tag = tag
        # spawn: torch and megatron keep threads and process groups that do not survive fork
        self.pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=init_worker, initargs=(tag,))
        self.future: cf.Future | None = None
        self.worker = None

    def idle(self) -> bool:
        return self.future is None or self.future.done()

    def broken(self) -> bool:
        return bool(getattr(self.pool, "_broken", False))

    def submit(self, label: str, fn, *args) -> cf.Future:
        inner = self.pool.submit(fn, *args)
        self.worker = self.worker or next(iter(self.pool._processes.values()))
        self.future = outer = cf.Future()
        outer.set_running_or_notify_cancel()

        def settle(done: cf.Future) -> None:
            exc = cf.CancelledError() if done.cancelled() else done.exception()
            if isinstance(exc, BrokenProcessPool):
                self.end()
                self.worker.join(5)
                code = self.worker.exitcode
                how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
                exc = StageFailed(f"{label}: its worker process {self.worker.pid} died ({how})")
            if exc is None:
                outer.set_result(done.result())
            else:
                outer.set_exception(exc)

        inner.add_done_callback(settle)
        threading.Thread(target=self._watch, args=(inner,), daemon=True).start()
        return outer

    def _watch(self, inner: cf.Future) -> None:
        """End a dead worker's tree as soon as it dies: its children inherited the pool's pipes,
        so the pool sees the death (and fails the run) only once they are gone too."""
        while not inner.done():
            try:  # WNOWAIT: look without reaping; the pool reaps its own process
                died = os.waitid(os.P_PID, self.worker.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # already reaped
                died = True
            if died:
                self.end()
                return
            time.sleep(0.5)

    def end(self) -> None:
        """Kill the worker and everything it started (a no-op for what is already gone)."""
        if self.worker is not None:
            end_tree(worker_tag(self.tag, self.worker.pid), group=self.worker.pid)


class SlurmBackend(_Backend):
    """One Slurm job per stage run, through submitit; the orchestrator waits on a thread."""

    def __init__(self, workspace: Path, slurm: dict, parallel: int, cluster: str = "slurm"):
        import submitit

        # cluster="local": submitit's local executor, the same jobs as processes on this host (tests)
        self.executor = submitit.AutoExecutor(folder=workspace / "slurm" / "%j", cluster=cluster)
        self.executor.update_parameters(**slurm_parameters(slurm))
        self.waiters = cf.ThreadPoolExecutor(max(parallel, 8))

    def submit(self, run, runtime):
        job = self.executor.submit(execute_stage_run, run, runtime)
        return self.waiters.submit(job.result)

    def close(self):
        self.waiters.shutdown(wait=False)


def slurm_parameters(slurm: dict) -> dict:
    """submitit parameters for one stage run; user keys (partition, gpus, time...) win."""
    return {"slurm_job_name": "midprobe", "timeout_min": 24 * 60, "cpus_per_task": 2,
            "nodes": 1, "tasks_per_node": 1, **slurm}


class RayBackend(_Backend):
    def __init__(self, address: str, parallel: int, threads: int):
        import ray

        self.containment = None
        self.started = not ray.is_initialized()  # a connection we make, we close
        if self.started:
            if address == "local":  # a private instance: never attach to someone else's cluster
                # its raylet and workers are ours: they die with us, and close() shuts them down
                self.containment = Containment()
                ray.init(address="local", num_cpus=parallel * threads, include_dashboard=False,
                         log_to_driver=False)
            else:
                ray.init(address=address)
        self.remote = ray.remote(num_cpus=threads, max_retries=0)(execute_stage_run)

    def submit(self, run, runtime):
        return self.remote.remote(run, runtime).future()

    def close(self):
        import ray

        if self.started:  # for a local instance, the instance itself
            ray.shutdown()
        if self.containment is not None:
            self.containment.close()


def make_backend(cfg: ExecutorSection, workspace: Path) -> _Backend:
    if cfg.type == "slurm":
        return SlurmBackend(workspace, cfg.slurm, cfg.parallel)
    if cfg.type == "ray":
        return RayBackend(cfg.ray_address, cfg.parallel, cfg.threads_per_run)
    return LocalBackend(cfg.parallel)


def run_plan(plan: Plan, store: RunStore, console: Console, executor: ExecutorSection | None = None
             ) -> dict[str, bool]:
    """Execute every stage run of the plan; returns ref -> reused-from-store."""
    cfg = executor or plan.executor
    runtime = Runtime(workspace=str(store.workspace), sweep=plan.name, threads=cfg.threads_per_run,
                      curation_executor=plan.curation_executor or None, wait_for_locks=False)
    worker_runtime = dataclasses.replace(runtime, owns_index=False)
    store.reconcile()
    runs = plan.runs()
    store.set_members(plan.name, {run: plan.roles.get(run, [{}]) for run in runs})

    outcome: dict[str, bool] = {}
    failed: dict[str, str] = {}
    for run in runs:  # externals and finished runs need no worker
        if run.stage == "external" or store.is_done(run):
            execute_stage_run(run, runtime)
            if run.stage != "external" and store.status(run) != "done":
                store.ingest(run)  # published by a worker whose orchestrator died before ingesting
            outcome[run.ref] = True
    reused = len(outcome)
    if reused:
        console.print(f"[dim]reusing {reused} finished stage run(s) from {store.workspace}[/]")

    # Ready runs with more work downstream go first (a decay stage before a probe), so the
    # last branches do not start when everything else is done.
    downstream = {run.ref: 0 for run in runs}
    for run in reversed(runs):  # runs are topologically ordered
        for dep in run.inputs.values():
            downstream[dep.ref] += 1 + downstream[run.ref]
    backend = None
    running: dict[cf.Future, tuple[StageRun, float, int]] = {}
    busy_until: dict[str, float] = {}
    waiting_since: dict[str, float] = {}  # runs held by other processes: since when, next report
    next_report: dict[str, float] = {}
    shown_progress: dict[str, str] = {}  # the progress line last printed for each probe run
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        TextColumn("[dim]{task.fields[status]}"), console=console, transient=True)
    try:
        with progress:
            while True:
                blocked = blocked_refs(failed, runs)
                in_flight = {run.ref for run, _, _ in running.values()}
                now = time.time()
                ready = [r for r in runs if r.ref not in outcome and r.ref not in failed
                         and r.ref not in blocked and r.ref not in in_flight
                         and busy_until.get(r.ref, 0) <= now
                         and all(d.ref in outcome for d in r.inputs.values())]
                ready.sort(key=lambda r: -downstream[r.ref])
                for run in ready[:max(0, cfg.parallel - len(running))]:  # bounded parallelism
                    backend = backend or make_backend(cfg, store.workspace)
                    if run.ref not in busy_until:  # a retry of a run held elsewhere is not news
                        progress.console.print(f"[cyan]▶[/] {run.label}  [dim]{run.ref}[/]")
                    task = progress.add_task(run.label, status="", total=None)
                    store.mark_submitted(run)
                    running[backend.submit(run, worker_runtime)] = (run, time.time(), task)
                if not running:
                    if not busy_until:
                        break
                    time.sleep(BUSY_RETRY_SECONDS)  # only runs other processes hold are left
                    continue
                done, _ = cf.wait(list(running), timeout=2, return_when=cf.FIRST_COMPLETED)
                for run, _, task in running.values():
                    status = run_progress(store, run.stage, run.key, run.canonical_config)
                    progress.update(task, status=status)
                    # a probe's steps as lines too: the live view is not drawn where output is not a terminal
                    if run.stage == "probe" and status and status != shown_progress.get(run.ref):
                        shown_progress[run.ref] = status
                        progress.console.print(f"[dim]  {run.label}: {status}[/]")
                for future in done:
                    run, started, task = running.pop(future)
                    progress.remove_task(task)
                    try:
                        _, was_reused = future.result()
                    except Busy as held:  # another orchestrator works on it: do other ready work meanwhile
                        waiting_since.setdefault(run.ref, time.time())
                        if time.time() >= next_report.get(run.ref, 0):
                            next_report[run.ref] = time.time() + WAIT_REPORT_SECONDS
                            waited = time.time() - waiting_since[run.ref]
                            progress.console.print(f"[dim]… waiting: {held}; other ready work goes on"
                                                   + (f" (waited {waited:.0f}s)" if waited else "") + "[/]")
                        busy_until[run.ref] = time.time() + BUSY_RETRY_SECONDS
                        continue
                    except Exception as exc:  # a failed stage run fails its dependants, not the sweep
                        failed[run.ref] = f"{type(exc).__name__}: {exc}".replace("\n", " ")
                        store.mark_failed(run, failed[run.ref])
                        log = store.partial_path(run) / STAGE_LOG
                        progress.console.print(f"[red]✗[/] {run.label}: {failed[run.ref]}"
                                               + (f"  [dim](log: {log})[/]" if log.exists() else ""))
                        continue
                    store.ingest(run)  # what the worker left in the run's directory
                    outcome[run.ref] = was_reused
                    busy_until.pop(run.ref, None)
                    note = "reused (finished by another process)" if was_reused else f"{time.time() - started:.0f}s"
                    progress.console.print(f"[green]✓[/] {run.label}  [dim]{note}[/]")
    except BaseException:
        if backend:
            backend.abort()
            backend = None
        raise
    finally:
        if backend:
            backend.close()
    if failed:
        skipped = len(runs) - len(outcome) - len(failed)
        raise StageFailed(f"{len(failed)} stage run(s) failed, {skipped} skipped; first: "
                          + next(iter(failed.values())))
    return outcome


def latest_metrics(store: RunStore, stage: str, key: str) -> tuple[int, dict] | None:
    """The step and metrics a run logged last: from the index, or (a worker's run) from its directory."""
    rows = store.query("SELECT step, name, value FROM metrics WHERE stage=? AND key=? AND step="
                       "(SELECT MAX(step) FROM metrics WHERE stage=? AND key=?)", (stage, key, stage, key))
    if rows:
        return rows[0]["step"], {r["name"]: r["value"] for r in rows}
    record = last_metrics(store.partial_dir(stage, key) / TRACKED_METRICS)
    return None if record is None else (record["step"], record["data"])


def progress_text(step: int, values: dict, total_steps: int | None) -> str:
    """A probe's 'step k/N · reward r · s/step · time left' (the last step's pace); else 'step k <metric>'."""
    if total_steps is None:
        shown = next((f"{name} {values[name]:.3f}" for name in PROGRESS_METRICS if name in values), "")
        return f"step {step} {shown}"
    if "timing_s/step" not in values:  # step 0: the base's profile and evaluation
        return f"step {step}/{total_steps}"
    per_step = values["timing_s/step"]
    left = (total_steps - step) * per_step  # evaluations not counted
    return (f"step {step}/{total_steps} · reward {values.get('critic/score/mean', float('nan')):.3f} · "
            f"{per_step:.1f} s/step · {left / 60:.1f} min left")


def run_progress(store: RunStore, stage: str, key: str, config: dict) -> str:
    latest = latest_metrics(store, stage, key)
    if latest is None:
        return ""
    total = config["spec"]["steps"] if stage == "probe" else None
    return progress_text(*latest, total)


def blocked_refs(failed: dict[str, str], runs: list[StageRun]) -> set[str]:
    """Runs that can never start because something upstream failed."""
    blocked: set[str] = set()
    for run in runs:  # runs are topologically ordered, so one pass suffices
        if any(d.ref in failed or d.ref in blocked for d in run.inputs.values()):
            blocked.add(run.ref)
    return blocked
