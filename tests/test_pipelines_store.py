"""Run store: stage keys, atomic publish, crash safety, locking, metrics index."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.store import RunStore, StageRun


def _chain(corpus_docs: int = 100):
    tok = StageRun("tokenizer", {"vocab_size": 512})
    web = StageRun("curate", {"corpus": "web", "docs": corpus_docs}, {"tokenizer": tok})
    qa = StageRun("curate", {"corpus": "qa", "docs": 50}, {"tokenizer": tok})
    train_a = StageRun("midtrain", {"tokens": 1000, "mix": {"web": 1.0}}, {"corpus:web": web})
    train_b = StageRun("midtrain", {"tokens": 1000, "mix": {"qa": 1.0}}, {"corpus:qa": qa})
    return tok, web, qa, train_a, train_b


def test_same_config_same_key_and_dict_order_ignored():
    a = StageRun("midtrain", {"tokens": 5, "mix": {"a": 0.5, "b": 0.5}})
    b = StageRun("midtrain", {"mix": {"b": 0.5, "a": 0.5}, "tokens": 5})
    assert a.key == b.key
    assert StageRun("midtrain", {"tokens": 6, "mix": {"a": 0.5, "b": 0.5}}).key != a.key


def test_changed_input_changes_only_dependants():
    tok, web, qa, train_a, train_b = _chain()
    tok2, web2, qa2, train_a2, train_b2 = _chain(corpus_docs=200)
    assert tok.key == tok2.key
    assert qa.key == qa2.key and train_b.key == train_b2.key  # not downstream of the change
    assert web.key != web2.key and train_a.key != train_a2.key  # downstream of it


def test_execute_publishes_with_manifest_and_reuses(tmp_path):
    store = RunStore(tmp_path)
    run = StageRun("tokenizer", {"vocab_size": 7}, label="tok")
    calls = []

    def work(out: Path):
        calls.append(out)
        (out / "result.txt").write_text("ok")
        (out / "metrics.jsonl").write_text(json.dumps({"step": 3, "data": {"train/loss": 1.5}}) + "\n")

    path, reused = store.execute(run, work)
    assert not reused and path == tmp_path / "tokenizer" / run.key
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["key"] == run.key and manifest["config"] == {"vocab_size": 7}
    assert "torch" in manifest["versions"]
    assert not store.partial_path(run).exists()
    assert store.metrics("tokenizer", run.key) == {"train/loss": [(3, 1.5)]}
    assert store.query("SELECT status FROM runs")[0]["status"] == "done"

    path2, reused2 = store.execute(run, work)
    assert reused2 and path2 == path and len(calls) == 1


def test_manifest_records_the_cpu_kernels_torch_chose(tmp_path):
    """One stage key on CPUs whose kernels round differently gives other weights, so a run says
    which kernels its process used (here forced to torch's portable ones)."""
    work = ("import sys, torch; from pathlib import Path; from pipelines.store import RunStore, StageRun; "
            "RunStore(Path(sys.argv[1])).execute(StageRun('tokenizer', {'vocab_size': 7}), lambda out: None)")
    subprocess.run([sys.executable, "-c", work, str(tmp_path)], check=True,
                   env={**os.environ, "ATEN_CPU_CAPABILITY": "default"})
    manifest = json.loads(next(tmp_path.glob("tokenizer/*/manifest.json")).read_text())
    assert manifest["cpu_capability"] == "DEFAULT"
    assert manifest["accelerator"] is None  # this process never initialised CUDA


def test_failure_leaves_nothing_finished_looking(tmp_path):
    store = RunStore(tmp_path)
    run = StageRun("midtrain", {"tokens": 1})

    def work(out: Path):
        (out / "half.bin").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.execute(run, work)
    assert not store.is_done(run)
    assert not store.path(run).exists()
    assert (store.partial_path(run) / "half.bin").exists()  # kept for resume
    assert store.query("SELECT status, error FROM runs")[0]["status"] == "failed"


def _slow_stage(workspace: str, marker: str) -> None:
    store = RunStore(Path(workspace))

    def work(out: Path):
        (out / "started").write_text("1")
        Path(marker).write_text(str(os.getpid()))
        time.sleep(60)

    store.execute(StageRun("midtrain", {"tokens": 2}), work)


def test_kill_9_mid_stage_leaves_no_finished_run_and_resumes(tmp_path):
    marker = tmp_path / "pid"
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_slow_stage, args=(str(tmp_path / "ws"), str(marker)))
    proc.start()
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    store = RunStore(tmp_path / "ws")
    run = StageRun("midtrain", {"tokens": 2})
    assert not store.is_done(run) and not store.path(run).exists()
    store.reconcile()
    assert store.query("SELECT status FROM runs")[0]["status"] == "interrupted"

    seen_partial = []

    def resume(out: Path):
        seen_partial.append((out / "started").exists())

    store.execute(run, resume)
    assert seen_partial == [True] and store.is_done(run)


def _contender(workspace: str, log: str) -> None:
    store = RunStore(Path(workspace))

    def work(out: Path):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)

    store.execute(StageRun("curate", {"corpus": "web"}), work)


def test_two_processes_never_run_the_same_stage_twice(tmp_path):
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_contender, args=(str(tmp_path / "ws"), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 1


def _open_store(workspace: str, barrier) -> None:
    barrier.wait()
    RunStore(Path(workspace)).record_metrics(StageRun("probe", {"pid": os.getpid()}), 0, {"x": 1.0})


def test_processes_opening_a_new_workspace_at_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_open_store, args=(str(tmp_path / "ws"), barrier)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * 6
    assert len(RunStore(tmp_path / "ws").query("SELECT * FROM metrics")) == 6
