"""Live tracking of a stage run: the SQLite index always, wandb when installed.

wandb runs offline unless the user configured it (``WANDB_MODE``); one wandb
run per stage run, grouped by sweep, with the stage as job type. The SQLite
index is what reports read; a stage's metrics.jsonl is re-ingested on publish,
so a resumed run's index ends identical to an uninterrupted one's.
"""

from __future__ import annotations

import contextlib
import os

from pipelines.store import RunStore, StageRun


class StageTracker:
    def __init__(self, store: RunStore, run: StageRun, sweep: str):
        self.store, self.run, self.sweep = store, run, sweep
        self.wandb_run = None

    def __enter__(self) -> "StageTracker":
        if os.environ.get("MIDPROBE_WANDB", "1") == "0":
            return self
        try:
            import wandb
        except ImportError:
            return self
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        with contextlib.suppress(Exception):  # tracking must never fail a stage run
            self.wandb_run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "midprobe"), group=self.sweep,
                job_type=self.run.stage, name=f"{self.run.label} [{self.run.key[:8]}]",
                config={"key": self.run.key, **self.run.config},
                dir=str(self.store.workspace), reinit="create_new",
                settings=wandb.Settings(console="off", x_disable_stats=True))
        return self

    def log(self, step: int, metrics: dict) -> None:
        self.store.record_metrics(self.run, step, metrics)
        if self.wandb_run is not None:
            with contextlib.suppress(Exception):
                self.wandb_run.log(metrics, step=step)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.wandb_run is not None:
            with contextlib.suppress(Exception):
                self.wandb_run.finish(exit_code=1 if exc_type else 0)
