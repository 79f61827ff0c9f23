"""What `validate-probe --curves` writes: a terminal table, decision.json and a self-contained page."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402

from pipelines.agreement import Accuracy  # noqa: E402
from pipelines.curves import SIGNALS, CurveDecision, Row  # noqa: E402
from pipelines.report import Doc, Figure, _colors, _png, _style, to_html  # noqa: E402
from runfiles import atomic_write  # noqa: E402


def _cell(a: Accuracy) -> str:
    if not a.pairs:
        return "–"
    return f"{a.accuracy:.2f} [{a.ci[0]:.2f}, {a.ci[1]:.2f}]"


def _columns(decision: CurveDecision) -> list[str]:
    level = f"{decision.definitions.confidence:.0%} CI"
    return ["signal", decision.unit, f"accuracy [{level}]", "pairs", "gap 0",
            f"separable accuracy [{level}]", "separable pairs", "target ties"]


def _cells(row: Row) -> list[str]:
    # a forecast that fell back is the mean of the last 3: say how often
    name = f"{row.signal} ({row.forecast_fallbacks}/{row.forecast_fits} fell back)" if row.forecast_fallbacks else row.signal
    return [name, str(row.budget), _cell(row.all), str(row.all.pairs), str(row.exact_ties),
            _cell(row.separable), str(row.separable.pairs), str(row.target_ties)]


def table(decision: CurveDecision) -> Table:
    out = Table(title=f"decision accuracy by signal and budget ({len(decision.groups)} groups, "
                      f"{len(decision.pairs)} pairs)", title_justify="left")
    for column in _columns(decision):
        out.add_column(column, justify="left" if column == "signal" else "right")
    for name in SIGNALS:
        for row in (r for r in decision.rows if r.signal == name):
            out.add_row(*_cells(row))
    return out


def cheapest(decision: CurveDecision, signal: str, threshold: float) -> Row | None:
    """The smallest budget at which `signal` ordered at least `threshold` of the separable pairs."""
    good = [r for r in decision.rows if r.signal == signal and r.separable.pairs and r.separable.accuracy >= threshold]
    return min(good, key=lambda r: r.budget) if good else None


def _accuracy_figure(decision: CurveDecision) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    colors = _colors(list(SIGNALS))
    for name in SIGNALS:
        rows = [r for r in decision.rows if r.signal == name and r.separable.pairs]
        if not rows:
            continue
        x = [r.budget for r in rows]
        ax.plot(x, [r.separable.accuracy for r in rows], marker="o", ms=3, color=colors[name], label=name, lw=1.5)
        ax.fill_between(x, [r.separable.ci[0] for r in rows], [r.separable.ci[1] for r in rows],
                        color=colors[name], alpha=0.12, lw=0)
    ax.set_xscale("log", base=2)
    budgets = sorted({r.budget for r in decision.rows})
    if budgets:
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("decision accuracy (separable pairs)", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False, ncol=2)
    _style(ax, "Decision accuracy against budget (band: bootstrap CI over groups, then pairs)",
           xlabel=f"budget ({decision.unit})")
    return Figure("decision_accuracy", "Decision accuracy of each signal against the probe's budget, with "
                  f"{decision.definitions.confidence:.0%} bootstrap CIs; dotted: a coin flip.", _png(fig))


def _group_figure(decision: CurveDecision, group: str) -> Figure:
    runs = decision.groups[group]
    metrics = list(runs[0].metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    colors = _colors([c.run for c in runs])
    budgets = sorted({r.steps for r in decision.rows if r.steps < decision.horizons[group]})
    for ax, metric in zip(axes[0], metrics):
        for curve in runs:
            steps, values = curve.metrics[metric]
            ax.plot(steps, values, color=colors[curve.run], lw=1.4, marker=".", ms=3,
                    label=f"{curve.run} (target {decision.targets[group][curve.run]:.3f})")
        for k in budgets:
            ax.axvline(k, color="grey", lw=0.6, ls=":")
        ax.axvline(decision.horizons[group], color="black", lw=0.9)
        _style(ax, metric, xlabel="RL step")
    axes[0][0].legend(fontsize=7, frameon=False)
    return Figure(f"group_{group}", f"Group {group}: the runs' curves; dotted: the budgets, solid: the horizon "
                  f"(step {decision.horizons[group]}).", _png(fig))


def page(decision: CurveDecision, sources: list[str]) -> str:
    doc = Doc()
    d = decision.definitions
    doc.heading("Decision accuracy from RL curves", 1)
    best = max((r for r in decision.rows if r.separable.pairs), key=lambda r: (r.separable.accuracy, -r.budget),
               default=None)
    doc.para(f"{len(decision.groups)} groups, {len(decision.pairs)} pairs of runs, "
             f"{sum(p.tie for p in decision.pairs)} target ties. "
             + (f"Best: **{best.signal}** at {best.budget} {decision.unit}, {_cell(best.separable)} of "
                f"{best.separable.pairs} separable pairs." if best else "No budget has a separable pair."))
    doc.para("Read from: " + ", ".join(f"`{s}`" for s in sources))
    doc.figure(_accuracy_figure(decision))
    doc.table(_columns(decision), [_cells(r) for name in SIGNALS for r in decision.rows if r.signal == name])
    doc.heading("Definitions")
    doc.table(["term", "definition"], [[k, str(v)] for k, v in d.describe().items() if k != "signals"]
              + [[f"signal: {k}", v] for k, v in SIGNALS.items()])
    doc.heading("Groups")
    for group in decision.groups:
        doc.figure(_group_figure(decision, group))
    return to_html(doc, "midprobe · decision accuracy from curves")


def write(decision: CurveDecision, out_dir: Path, sources: list[str]) -> tuple[Path, Path]:
    """decision.json and decision.html, each written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    body = json.dumps({**decision.to_json(), "sources": sources}, indent=2) + "\n"
    html = page(decision, sources)
    json_path, html_path = out_dir / "decision.json", out_dir / "decision.html"
    atomic_write(json_path, body)
    atomic_write(html_path, html)
    return json_path, html_path
