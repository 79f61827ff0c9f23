"""A sweep's calibration: what `validate-probe --curves` measured on long RL curves, read at this
sweep's probe budget, so that a verdict says how often a probe this long ordered pairs right."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import InputError

# the curves signal that reads a curve the way each ranking score does
SCORE_SIGNALS = {"auc_acc": "auc", "auc_gain": "auc", "final_acc": "last", "final_gain": "gain",
                 "fitted_gain": "slope"}


@dataclass
class Calibration:
    path: Path
    rows: list[dict]  # decision.json rows: signal, steps, budget, separable {accuracy, ci, pairs}
    unit: str  # the calibration's budget unit: steps, rollouts or tokens

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        errors = calibration_errors(path)
        if errors:
            raise InputError(errors[0])
        data = json.loads(path.read_text())
        definitions = data["definitions"]
        # written before budget units: rollouts when it counted rollouts per step
        unit = definitions.get("budget_unit") or ("rollouts" if definitions.get("rollouts_per_step") else "steps")
        return cls(path, data["rows"], unit)

    def budget(self, steps: int, rollouts_per_step: int) -> int | None:
        """A probe of `steps` steps in the calibration's unit; None in tokens, which a probe's
        spec does not fix (its responses' lengths do)."""
        return {"steps": steps, "rollouts": steps * rollouts_per_step}.get(self.unit)

    def at(self, signal: str, budget: int) -> dict | None:
        """The longest calibrated budget not longer than `budget`, with separable pairs."""
        rows = [r for r in self.rows if r["signal"] == signal and r["budget"] <= budget and r["separable"]["pairs"]]
        return max(rows, key=lambda r: r["budget"]) if rows else None

    def cheapest(self, signal: str, accuracy: float) -> dict | None:
        rows = [r for r in self.rows if r["signal"] == signal and r["separable"]["pairs"]
                and (r["separable"]["accuracy"] or 0) >= accuracy]
        return min(rows, key=lambda r: r["budget"]) if rows else None

    def sentence(self, score: str, budget: int | None) -> str:
        """What the calibration says about a probe of `budget` read by `score`, for the verdict."""
        signal = SCORE_SIGNALS[score]
        where = f"On the calibration curves ({self.path.name}, signal '{signal}' for {score})"
        if budget is None:
            return f"{where}, budgets are in {self.unit}, which this probe's spec does not fix: not read."
        row = self.at(signal, budget)
        if row is None:
            shortest = min((r["budget"] for r in self.rows if r["signal"] == signal), default=None)
            return (f"{where}, no budget as short as this probe's {budget} {self.unit} was measured"
                    + (f" (the shortest: {shortest})." if shortest is not None else "."))
        sep = row["separable"]
        return (f"{where}, a {row['budget']}-{self.unit[:-1]} probe ordered {sep['accuracy']:.2f} "
                f"[{sep['ci'][0]:.2f}, {sep['ci'][1]:.2f}] of {sep['pairs']} separable pairs as their ends did"
                + (f" (this probe: {budget} {self.unit})." if row["budget"] != budget else "."))


def calibration_errors(path: Path) -> list[str]:
    """One line per problem with a calibration file (probe.calibration)."""
    if not path.is_file():
        return [f"probe.calibration: file not found: {path}"]
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return [f"probe.calibration: {path}: not JSON ({exc.msg}, line {exc.lineno})"]
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or "definitions" not in data:
        return [f"probe.calibration: {path}: no rows and definitions (write it with "
                "`midprobe validate-probe --curves`)"]
    for i, row in enumerate(data["rows"]):
        if not (isinstance(row, dict) and {"signal", "budget", "separable"} <= set(row)
                and {"accuracy", "ci", "pairs"} <= set(row["separable"] or {})):
            return [f"probe.calibration: {path}: rows[{i}] lacks signal, budget or separable accuracy"]
    return []
