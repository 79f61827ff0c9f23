"""Executors: the Slurm job spec submitit would submit, and stage runs on a local Ray instance."""

import os
import pickle
from pathlib import Path

from rich.console import Console

from pipelines.execute import Runtime, SlurmBackend, execute_stage_run, run_plan
from pipelines.plan import Plan, problems_run
from pipelines.store import RunStore
from pipelines.sweep import ExecutorSection, ProblemSet


def _problems_plan(executor: ExecutorSection) -> Plan:
    problems = problems_run({"seed": 3}, ProblemSet(toy_split="probe", n=20, difficulty=[1, 2]),
                            ProblemSet(toy_split="eval", n=10), Path.cwd())
    return Plan("executor-test", executor, problems, {})


def test_slurm_job_spec_renders_without_a_cluster(tmp_path, monkeypatch):
    # submitit only checks that `srun` exists before building its Slurm executor; it is never run here
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    backend = SlurmBackend(tmp_path, {"slurm_partition": "gpu", "gpus_per_node": 8, "timeout_min": 600}, parallel=2)
    slurm = backend.executor._executor
    script = slurm._make_submission_file_text(slurm._submitit_command_str, "uid")
    assert "#SBATCH --partition=gpu" in script
    assert "#SBATCH --gpus-per-node=8" in script
    assert "#SBATCH --time=600" in script
    assert "#SBATCH --cpus-per-task=2" in script  # midprobe's default for a stage run
    assert "submitit.core._submit" in script and str(tmp_path / "slurm") in script
    # what submitit pickles for the job: the stage-run entry point and its arguments
    plan = _problems_plan(ExecutorSection(type="slurm"))
    payload = pickle.loads(pickle.dumps((execute_stage_run, plan.problems, Runtime(str(tmp_path), "s"))))
    assert payload[1].key == plan.problems.key


def test_ray_executor_runs_stage_runs_on_a_local_instance(tmp_path):
    import ray

    plan = _problems_plan(ExecutorSection(type="ray", parallel=1, ray_address="local"))
    store = RunStore(tmp_path)
    try:
        outcome = run_plan(plan, store, Console(file=open("/dev/null", "w")))
    finally:
        ray.shutdown()
    assert outcome == {plan.problems.ref: False}
    out = store.path(plan.problems)
    assert (out / "train.jsonl").read_text().count("\n") == 20 * 4  # the pool: n at each of 4 levels
    assert store.is_done(plan.problems)
