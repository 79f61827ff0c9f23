"""summary.json of a probe run: one model, written by both engines (embedded and verl).

Both engines log metrics.jsonl in verl's file-logger shape and write profile.json, so the
summary is built from those rows and that profile alone; what differs between the engines
(the prompt counts, the embedded engine's timings) comes in as arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from rl_probe.spec import ProbeSpec
from runfiles import atomic_write

Metrics = dict[str, float | int]  # int | float: a metric read back keeps the JSON type it was logged with


class ProbeSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: str
    spec_version: int
    spec_hash: str
    engine: Literal["embedded", "verl"]
    seed: int
    checkpoint: str
    steps: int
    final_step: int | None  # the last evaluated step; None when no evaluation was logged
    final: Metrics
    initial: Metrics
    evals: dict[str, Metrics]  # val-core/* metrics by evaluated step
    final_train_score: float | int | None  # critic/score/mean of the last step that logged it
    base_pass_at_k: dict[str, float] | None  # profile.json's pass@k by k; None without a profile
    base_fewshot_acc: float | None  # the embedded engine's few-shot profile only
    prompts: dict[str, Any] | None  # prompt counts kept and dropped for length, by split
    timings: dict[str, float] | None = None  # the embedded engine's wall-clock seconds; absent for verl

    @classmethod
    def from_metrics(cls, rows: list[dict], profile: dict | None, *, spec: ProbeSpec, engine: str, seed: int,
                     checkpoint: Path, prompts: dict | None, timings: dict[str, float] | None = None
                     ) -> ProbeSummary:
        """The summary of a probe from its metrics.jsonl rows ({"step", "data"}) and profile.json."""
        evals = {r["step"]: {k: v for k, v in r["data"].items() if k.startswith("val-core/")} for r in rows}
        evals = {step: values for step, values in evals.items() if values}
        final_step = max(evals) if evals else None
        return cls(
            spec=spec.name, spec_version=spec.version, spec_hash=spec.content_hash(), engine=engine, seed=seed,
            checkpoint=str(checkpoint), steps=spec.steps, final_step=final_step,
            final=evals.get(final_step, {}), initial=evals.get(0, {}),
            evals={str(step): values for step, values in sorted(evals.items())},
            final_train_score=next((r["data"]["critic/score/mean"] for r in reversed(rows)
                                    if "critic/score/mean" in r["data"]), None),
            base_pass_at_k=profile and profile["pass_at_k"],
            base_fewshot_acc=(profile or {}).get("fewshot", {}).get("acc"),
            prompts=prompts,
            timings=None if timings is None else _with_mean_step(timings, rows),
        )

    def as_json(self) -> dict:
        """summary.json's content: every field, timings only where the engine measured them."""
        return self.model_dump(exclude={"timings"} if self.timings is None else set())

    def write(self, path: Path) -> dict:
        data = self.as_json()
        atomic_write(path, json.dumps(data, indent=2) + "\n")
        return data


def _with_mean_step(timings: dict[str, float], rows: list[dict]) -> dict[str, float]:
    step_seconds = [r["data"]["timing_s/step"] for r in rows if r["step"] > 0]
    return {**{k: round(v, 3) for k, v in timings.items()},
            "mean_step_s": float(np.mean(step_seconds)) if step_seconds else 0.0}
