"""Only the orchestrator opens index.sqlite: stage workers (other processes, on a cluster other
hosts) leave status and metrics in their run directories, and the orchestrator ingests them."""

import dataclasses
import sqlite3
import sys
from pathlib import Path

import cloudpickle
import pytest
from rich.console import Console

from pipelines.errors import StageFailed
from pipelines.execute import SlurmBackend, execute_stage_run, run_plan
from pipelines.plan import Plan, problems_run, selection_run
from pipelines.store import TRACKED_METRICS, IndexNotOwned, RunStore, StageRun
from pipelines.sweep import ExecutorSection, ProblemSet

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the guard travels with the job


def guarded_execute(run, runtime):
    """A stage worker on a host where index.sqlite cannot be opened."""
    def refuse(*args, **kwargs):
        raise PermissionError("this worker cannot open index.sqlite")

    sqlite3.connect = refuse
    return execute_stage_run(run, runtime)


class GuardedSlurm(SlurmBackend):
    """The Slurm backend on submitit's local executor, every job behind the guard."""

    owns_index = False

    def submit(self, run, runtime):
        job = self.executor.submit(guarded_execute, run, dataclasses.replace(runtime, owns_index=self.owns_index))
        return self.waiters.submit(job.result)


def _plan() -> Plan:
    train, evals = ProblemSet(toy_split="probe", n=8, difficulty=[1]), ProblemSet(toy_split="eval", n=4)
    pool = problems_run({"seed": 5}, train, evals, Path.cwd())
    plan = Plan("cluster-test", ExecutorSection(type="slurm", parallel=2), selection_run(pool, train, evals, "fixed"), {})
    plan.role(pool, kind="problems")
    return plan


def _run(tmp_path, monkeypatch, owns_index: bool) -> RunStore:
    monkeypatch.setattr(GuardedSlurm, "owns_index", owns_index)
    monkeypatch.setattr("pipelines.execute.make_backend",
                        lambda cfg, workspace: GuardedSlurm(workspace, {"timeout_min": 10}, 2, cluster="local"))
    store = RunStore(tmp_path / "ws")
    run_plan(_plan(), store, Console(file=open("/dev/null", "w")))
    return store


@pytest.mark.timeout(300)
def test_slurm_workers_never_open_the_index_and_the_orchestrator_ingests_their_runs(tmp_path, monkeypatch):
    store = _run(tmp_path, monkeypatch, owns_index=False)
    plan = _plan()
    for run in (plan.problems.inputs["pool"], plan.problems):
        assert store.is_done(run) and store.status(run) == "done"
        row = store.query("SELECT host, cpu_seconds FROM runs WHERE stage=? AND key=?", (run.stage, run.key))[0]
        assert row["host"] == store.manifest(run)["host"] and row["cpu_seconds"] is not None
    assert (store.path(plan.problems) / "train.jsonl").read_text().count("\n") == 8


@pytest.mark.timeout(300)
def test_the_guard_stops_a_worker_that_opens_the_index(tmp_path, monkeypatch):
    """The control: a worker that owned the index, as every worker did, fails behind the guard."""
    with pytest.raises(StageFailed, match="cannot open index.sqlite"):
        _run(tmp_path, monkeypatch, owns_index=True)


def test_a_workers_tracked_metrics_reach_the_index_on_ingest(tmp_path):
    run = StageRun("select_problems", {"k": 8})
    worker = RunStore(tmp_path, index=False)
    with pytest.raises(IndexNotOwned):
        worker.query("SELECT 1")

    def work(out):
        worker.record_metrics(run, 0, {"difficulty/pass@8/level_1": 0.5})
        assert (out / TRACKED_METRICS).is_file()

    worker.execute(run, work)
    orchestrator = RunStore(tmp_path)
    assert orchestrator.status(run) is None  # the worker wrote nothing to the index
    orchestrator.ingest(run)
    assert orchestrator.status(run) == "done"
    assert orchestrator.metrics(run.stage, run.key) == {"difficulty/pass@8/level_1": [(0, 0.5)]}
