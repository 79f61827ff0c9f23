"""Run files: metrics.jsonl survives a writer killed mid-line at every reader, and files are
replaced atomically."""

import json
import logging

from pipelines.processes import MetricsTail
from pipelines.store import RunStore, StageRun
from runfiles import append_metrics, atomic_write, keep_metrics_through, read_metrics

TORN = '{"step": 3, "data": {"train/lo'


def _torn_file(path):
    append_metrics(path, 1, {"train/loss": 2.0})
    append_metrics(path, 2, {"train/loss": 1.5})
    with open(path, "a") as f:
        f.write(TORN)
    return path


def test_a_torn_line_is_skipped_counted_and_logged(tmp_path, caplog):
    path = _torn_file(tmp_path / "metrics.jsonl")
    with caplog.at_level(logging.WARNING, logger="runfiles"):
        assert [r["step"] for r in read_metrics(path)] == [1, 2]
    assert "skipped 1 unreadable line(s)" in caplog.text and str(path) in caplog.text
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_a_resumed_writer_drops_torn_and_later_lines_then_appends_cleanly(tmp_path):
    path = _torn_file(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in keep_metrics_through(path, 1)] == [1]
    append_metrics(path, 2, {"train/loss": 1.4})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    atomic_write(tmp_path / "summary.json", "old")
    atomic_write(tmp_path / "summary.json", b"new")
    assert (tmp_path / "summary.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_the_store_ingests_a_run_whose_metrics_end_torn(tmp_path):
    store = RunStore(tmp_path / "ws")
    run = StageRun("midtrain", {"tokens": 1})
    store.execute(run, lambda out: _torn_file(out / "metrics.jsonl"))
    assert store.metrics("midtrain", run.key) == {"train/loss": [(1, 2.0), (2, 1.5)]}


def test_forwarding_a_trainers_metrics_skips_a_torn_line(tmp_path):
    """torchrun's rank 0 writes the file; a line torn by a killed attempt, then completed by
    the next append, is never forwarded and never fatal."""
    path = _torn_file(tmp_path / "metrics.jsonl")
    with open(path, "a") as f:
        f.write("\n")
    append_metrics(path, 3, {"train/loss": 1.2})
    seen = []
    MetricsTail(path, lambda step, data: seen.append(step))()
    assert seen == [1, 2, 3]
