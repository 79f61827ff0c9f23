"""The recipe comparison report: a self-contained HTML file and a Markdown summary.

Every number comes from ``pipelines.results`` (the run store), and the report
ends with the stage runs it read, so each figure traces to a workspace dir.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.calibration import Calibration  # noqa: E402
from pipelines.failures import FAILURE_MODES  # noqa: E402
from pipelines.ranking import (SCORES, Ranking, load_eval_correctness, rank, run_scores, separation_budget,  # noqa: E402
                               spearman, verdict)
from pipelines.results import SweepResults, recipe_cost_hours  # noqa: E402
from rl_probe.difficulty import pooled_pass_at_k  # noqa: E402
from runfiles import COMPLETIONS_FILE, atomic_write, read_jsonl  # noqa: E402

PROBE_CURVES = [
    ("critic/score/mean", "training reward"),
    ("response_length/mean", "response length (tokens)"),
    ("response_length/clip_ratio", "clip ratio (hit length limit)"),
    ("behaviour/repetition_ratio", "repetition ratio"),
    ("behaviour/format_error_ratio", "format-error ratio"),
    # the strategy RL picks: answering at once vs working first (OctoThinker's longer reasoning)
    ("behaviour/boxed_first_ratio", "answers boxed first (no work shown)"),
    ("actor/entropy", "policy entropy"),
    ("probe/uniform_group_ratio", "uniform-reward groups"),
]


@dataclass
class Figure:
    name: str
    caption: str
    png: bytes


@dataclass
class Doc:
    """The report as a list of blocks rendered twice: to Markdown and to HTML."""

    blocks: list[tuple[str, object]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def figure(self, fig: Figure) -> None:
        self.figures.append(fig)
        self.blocks.append(("figure", fig))

    def samples(self, items: list[dict]) -> None:
        self.blocks.append(("samples", items))


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _colors(recipes: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {r: cmap(i % 10) for i, r in enumerate(recipes)}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _style(ax, title: str, xlabel: str = "probe step") -> None:
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _band(ax, curves: list[tuple[list[int], list[float]]], color, label: str) -> None:
    """Mean over seeds with a min–max band, on the steps all seeds share."""
    steps = sorted(set.intersection(*(set(s) for s, _ in curves)))
    if not steps:
        return
    values = np.array([[dict(zip(s, v))[t] for t in steps] for s, v in curves])
    ax.plot(steps, values.mean(0), color=color, label=label, lw=1.8)
    if len(curves) > 1:
        ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.18, lw=0)


def _accuracy_figure(results: SweepResults, colors) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for recipe in colors:
        runs = [r for r in results.probes if r.recipe == recipe]
        _band(ax, [(r.eval_steps, list(r.accuracy)) for r in runs], colors[recipe],
              f"{recipe} (n={len(runs)})")
    _style(ax, "Held-out accuracy during the probe (mean over seeds, band = min–max)")
    ax.set_ylabel("accuracy", fontsize=8)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
    return Figure("accuracy", "Held-out accuracy per recipe over probe steps.", _png(fig))


def _curves_figure(results: SweepResults, colors) -> Figure:
    columns = -(-len(PROBE_CURVES) // 2)  # two rows, as many columns as the curves need
    fig, axes = plt.subplots(2, columns, figsize=(3.5 * columns, 5.4))
    for ax, (metric, title) in zip(axes.flat, PROBE_CURVES):
        for recipe in colors:
            curves = [tuple(zip(*r.metrics[metric])) for r in results.probes
                      if r.recipe == recipe and metric in r.metrics]
            if curves:
                _band(ax, [(list(s), list(v)) for s, v in curves], colors[recipe], recipe)
        _style(ax, title)
    axes.flat[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return Figure("probe_curves", "Probe training curves per recipe (band = min–max over seeds).", _png(fig))


def _passk_figure(results: SweepResults, colors) -> Figure | None:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    drawn = False
    for recipe in colors:
        profiles = [r.profile.get("pass_at_k", {}) for r in results.probes if r.recipe == recipe]
        profiles = [p for p in profiles if p]
        if not profiles:
            continue
        ks = sorted(int(k) for k in profiles[0])
        ax.plot(ks, [np.mean([p[str(k)] for p in profiles]) for k in ks], marker="o", ms=3,
                color=colors[recipe], label=recipe)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    _style(ax, "Step-0 pass@k on the probe problems", "k")
    ax.legend(fontsize=7, frameon=False)
    return Figure("pass_at_k", "Unbiased pass@k of each checkpoint before RL.", _png(fig))


def _loss_figure(results: SweepResults) -> Figure | None:
    runs = [m for m in [results.base, *results.midtrain] if m and "train/loss" in m.metrics]
    if not runs:
        return None
    by_ref = {info.ref: info for info in runs}

    def start(info) -> float:
        """Tokens trained before this stage on its chain (base, stable, decay): one x axis on
        which a decay branch continues where its stable stage ended."""
        parent = by_ref.get(info.manifest.get("inputs", {}).get("init", ""))
        return start(parent) + (_last(parent.metrics.get("train/tokens")) or 0.0) if parent else 0.0

    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(11, 3.2))
    cmap = plt.get_cmap("tab10")
    for i, info in enumerate(runs):
        offset, tokens = start(info), dict(info.metrics.get("train/tokens", []))
        for axis, name in ((ax, "train/loss"), (ax_lr, "train/lr")):
            if name in info.metrics:
                steps, values = zip(*info.metrics[name])
                axis.plot([offset + tokens.get(s, s) for s in steps], values, lw=1.2, color=cmap(i % 10),
                          label=_stage_name(info))
    _style(ax, "Training loss", "tokens since the base's pretraining")
    ax.set_yscale("log")
    _style(ax_lr, "Learning rate", "tokens since the base's pretraining")
    ax_lr.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
    return Figure("training_loss", "Training loss and learning rate of the base and every mid-training "
                  "stage; each decay branch continues where its stable stage ended.", _png(fig))


def _stage_name(info) -> str:
    if info.role.get("kind") == "base":
        return "base pretraining"
    return f"{'/'.join(info.role['recipes'])} · {info.role.get('phase', '')}"


def _last(series: list[tuple[int, float]] | None) -> float | None:
    return series[-1][1] if series else None


def _prompt_lengths(results: SweepResults) -> str:
    """Which problems the probe kept: those whose prompt fits the spec's max_prompt_length."""
    counts = {}
    for run in results.probes:
        prompts = results.probe_info[run.key].read_json("summary.json").get("prompts")
        if prompts:  # the same for every checkpoint with one tokenizer; listed once per distinct count
            key = tuple(prompts[split][kind] for split in ("train", "eval") for kind in ("dropped", "total"))
            counts.setdefault(key, []).append(run.recipe)
    if not counts:
        return "Prompt lengths: not recorded by these probe runs."
    limit = next(results.probe_info[r.key].manifest["config"]["spec"]["max_prompt_length"] for r in results.probes)
    parts = [f"train {td} of {tt} dropped, eval {ed} of {et} dropped"
             + (f" ({', '.join(sorted(set(recipes)))})" if len(counts) > 1 else "")
             for (td, tt, ed, et), recipes in counts.items()]
    return (f"Prompts longer than the spec's max_prompt_length ({limit} tokens) are left out of training and "
            f"evaluation alike: {'; '.join(parts)}. Held-out numbers are over the eval problems kept.")


def build(results: SweepResults, title: str, score: str = "auc_acc", samples: int = 2000,
          confidence: float = 0.95, n_rollouts: int = 3, decision=None,
          calibration: Path | None = None) -> tuple[Doc, Ranking]:
    ranking = rank(results.probes, score=score, samples=samples, confidence=confidence)
    order = [r.recipe for r in ranking.recipes]
    colors = _colors(order)
    doc = Doc()
    doc.heading(title, 1)
    spec_hash = results.probes[0].spec_hash
    seeds = sorted({r.seed for r in results.probes})
    replicas = sorted({r.replica for r in results.probes if r.replica is not None})
    spec = results.probe_info[results.probes[0].key].manifest["config"]["spec"]
    calibrated = ""
    if calibration is not None:  # what a probe this long was worth on long RL curves
        known = Calibration.load(calibration)
        calibrated = " " + known.sentence(score, known.budget(spec["steps"], spec["prompts_per_step"] * spec["group_size"]))
    doc.para(verdict(ranking, results.probes) + f" (Intervals over {ranking.sources}.)" + calibrated)
    doc.para(f"Sweep **{results.sweep}** · probe spec **{spec['name']}** (hash `{spec_hash}`) · "
             f"seeds {', '.join(map(str, seeds))}"
             + (f" · mid-training replicas (seeds) {', '.join(map(str, replicas))}" if replicas else "")
             + f" · generated {time.strftime('%Y-%m-%d %H:%M')}")

    doc.heading("Ranking")
    doc.para(f"Score: {SCORES[score]}. Confidence intervals: {confidence:.0%} hierarchical bootstrap "
             f"over {ranking.sources} ({samples} replicates). Cost: CPU-hours of the recipe's "
             "mid-training stages (every replica) plus its probes.")
    modes_by_recipe = {r: sorted({m for p in results.probes if p.recipe == r for m in p.failure_modes})
                       for r in order}
    rows = []
    for i, r in enumerate(ranking.recipes):
        nxt = ranking.recipes[i + 1].recipe if i + 1 < len(ranking.recipes) else None
        runs = [p for p in results.probes if p.recipe == r.recipe]
        flagged = [f"{m} ({sum(m in p.failure_modes for p in runs)}/{len(runs)})"
                   for m in modes_by_recipe[r.recipe]]
        rows.append([str(i + 1), r.recipe, f"{r.score:.3f}", f"[{r.ci_low:.3f}, {r.ci_high:.3f}]",
                     _fmt(r.step0_acc), _fmt(r.final_acc), f"{r.final_acc - r.step0_acc:+.3f}",
                     f"{ranking.beats[(r.recipe, nxt)]:.0%}" if nxt else "–",
                     ", ".join(flagged) or "none", f"{recipe_cost_hours(results, r.recipe):.3f}",
                     str(r.seeds)])
    doc.table(["#", "recipe", score, f"{confidence:.0%} CI", "step-0 acc", "final acc", "gain",
               "P(beats next)", "failure modes", "CPU-h", "probe runs"], rows)
    _replica_section(doc, ranking)
    _separation_section(doc, results, ranking)

    doc.heading("Probe")
    doc.para(_prompt_lengths(results))
    doc.figure(_accuracy_figure(results, colors))
    doc.figure(_curves_figure(results, colors))
    passk = _passk_figure(results, colors)
    if passk:
        doc.figure(passk)
    doc.heading("Diagnostics", 3)
    # does RL move each checkpoint at all, whatever its rank
    learning = {r.recipe: r for r in rank(results.probes, score="fitted_gain", samples=samples,
                                          confidence=confidence).recipes}
    diag = []
    for recipe in order:
        runs = [p for p in results.probes if p.recipe == recipe]
        uniform = [np.mean([v for s, v in p.metrics.get("probe/uniform_group_ratio", []) if s <= 10])
                   for p in runs if p.metrics.get("probe/uniform_group_ratio")]
        pass8 = [p.profile.get("pass_at_k", {}).get("8") for p in runs]
        pass8 = [v for v in pass8 if v is not None]
        final = np.array([p.accuracy[-1] for p in runs])
        n_problems = runs[0].correct.shape[1]
        se = math.sqrt(max(final.mean() * (1 - final.mean()), 1e-12) / (n_problems * len(runs)))
        diag.append([recipe, _fmt(np.mean(pass8) if pass8 else None),
                     _fmt(np.mean(uniform) if uniform else None),
                     f"{final.mean():.3f} ± {se:.3f}",
                     f"{learning[recipe].score:+.3f} [{learning[recipe].ci_low:+.3f}, {learning[recipe].ci_high:+.3f}]",
                     str(n_problems)])
    header = ["recipe", "step-0 pass@8 (probe set)", "uniform groups, steps ≤ 10",
              "final held-out acc ± SE", f"fitted gain, {confidence:.0%} CI", "eval problems"]
    spec = results.probe_info[results.probes[0].key].manifest["config"]["spec"]
    if sampled_k := spec.get("eval_sampled"):
        header.append(f"avg@{sampled_k} step 0 → last (T={spec['temperature']})")
        for row, recipe in zip(diag, order):
            first, last = np.mean([load_eval_correctness(results.probe_info[p.key].path, "eval-sampled")[2]
                                   .mean(axis=1)[[0, -1]] for p in results.probes if p.recipe == recipe], axis=0)
            row.append(f"{first:.3f} → {last:.3f}")
    doc.table(header, diag)
    doc.para(f"Fitted gain: {SCORES['fitted_gain']}; an interval above 0 means the probe's RL really "
             f"improved the checkpoint on held-out problems. Intervals over {ranking.sources}.")
    if results.difficulty:
        d = results.difficulty.read_json("difficulty.json")
        levels = ", ".join(f"level {lvl}: {v:.2f}" for lvl, v in d["pass_at_k_by_level"].items())
        doc.para(f"Difficulty control (`{results.difficulty.ref}`): the base's pass@{d['k']} per difficulty "
                 f"level was {levels}; target {d['target'][0]:.0%}–{d['target'][1]:.0%}; the probe uses "
                 f"level(s) {', '.join(map(str, d['chosen_levels']))} (pooled pass@{d['k']} "
                 f"{pooled_pass_at_k(d['pass_at_k_by_level'], d['chosen_levels']):.2f}).")
    doc.para("Failure modes: " + "; ".join(f"**{k}** — {v}" for k, v in FAILURE_MODES.items()) + ".")
    _control_section(doc, results, order)

    _cheap_signals(doc, results, ranking)
    if decision is not None:
        _decision_section(doc, decision)
    _data_section(doc, results)
    _training_section(doc, results)

    if n_rollouts:
        doc.heading("What the model writes")
        doc.para("Per checkpoint (its first probe seed), its answers to the first held-out problems at the "
                 "first and the last eval, with their rewards (the probe's completions.jsonl).")
        for recipe in order:
            run = min((p for p in results.probes if p.recipe == recipe), key=lambda p: (p.replica or 0, p.seed))
            completions = read_jsonl(results.probe_info[run.key].path / COMPLETIONS_FILE)
            for step in dict.fromkeys(row["step"] for row in completions):
                shown = [row for row in completions if row["step"] == step][:n_rollouts]
                doc.samples([{"title": f"{recipe}{'' if run.replica is None else f' · replica {run.replica}'}"
                                       f" · seed {run.seed} · step {step}", **row} for row in shown])

    doc.heading("Provenance")
    doc.para("Every number above is read from these stage runs (workspace-relative directories).")
    prov = [[p.recipe + ("" if p.replica is None else f" · replica {p.replica}"), str(p.seed),
             f"probe/{p.key}"] for p in results.probes]
    prov += [[f"{p.recipe} · random-reward control" + ("" if p.replica is None else f" · replica {p.replica}"),
              str(p.seed), f"probe/{p.key}"] for p in results.controls]
    prov += [[", ".join(m.role["recipes"]) or "base", m.role.get("phase", ""), f"midtrain/{m.key}"]
             for m in results.midtrain]
    if results.base:
        prov.append(["base", "pretrain", results.base.ref])
    prov += [[name, "curation", info.ref] for name, info in results.curation.items()]
    doc.table(["recipe / corpus", "seed / phase", "stage run"], prov)
    return doc, ranking


def _control_section(doc: Doc, results: SweepResults, order: list[str]) -> None:
    """Each checkpoint's RL gain beside its random-reward control's (probe.control)."""
    if not results.controls:
        return
    doc.heading("Random-reward control", 3)
    doc.para("Every checkpoint probed again with the same seeds and its rewards shuffled within each "
             "group (the spec's random-reward control, its own hash): the same reward mean and spread, "
             "no information about which response was right. A gain no larger than the control's comes "
             "from the update itself (format priors, clipping), not from learning from the reward. "
             "Gain: held-out accuracy at the last eval minus step 0, mean over seeds; fitted gain: "
             f"{SCORES['fitted_gain']}.")
    rows = []
    for recipe in order:
        runs = [p for p in results.probes if p.recipe == recipe]
        controls = [p for p in results.controls if p.recipe == recipe]
        if not controls:
            continue
        gain, control = (np.mean([run_scores(p.correct, "final_gain") for p in group]) for group in (runs, controls))
        fitted, control_fitted = (np.mean([run_scores(p.correct, "fitted_gain") for p in group])
                                  for group in (runs, controls))
        rows.append([recipe, f"{gain:+.3f}", f"{control:+.3f}", f"{gain - control:+.3f}",
                     f"{fitted:+.3f}", f"{control_fitted:+.3f}", f"{len(runs)} / {len(controls)}"])
    doc.table(["recipe", "RL gain", "control's gain", "gain − control", "fitted gain", "control's fitted gain",
               "probe / control runs"], rows)


def _separation_section(doc: Doc, results: SweepResults, ranking: Ranking, power: float = 0.8) -> None:
    """For each pair whose interval includes 0: the seeds or problems that would separate it."""
    order = [r.recipe for r in ranking.recipes]
    pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:] if ranking.difference_ci(a, b)[1] <= 0]
    if not pairs:
        return
    budgets = [separation_budget(results.probes, a, b, ranking.score_name, ranking.confidence, power)
               for a, b in pairs]
    unit, n_problems = budgets[0].unit, budgets[0].n_problems
    doc.heading("What would separate them", 3)
    if all(b.unit_var is None for b in budgets):
        doc.para(f"{len(pairs)} pair(s) are not separated; how many {unit} would separate them needs the "
                 f"spread between {unit}, so at least 2 of them (`probe.seeds`).")
        return
    seed_hours = sum(np.mean([p.cpu_seconds for p in results.probes if p.recipe == r]) for r in order) / 3600
    doc.para(f"Each pair whose {ranking.confidence:.0%} interval includes 0, and how many {unit} (at "
             f"{n_problems} eval problems) or eval problems (at the {unit} it has) would give an interval "
             f"excluding 0 with probability {power:.0%} if the true difference were the one measured (a "
             f"normal approximation of the interval from the difference's parts: between {unit}, between "
             "problems, and their interaction). \"–\": no count suffices while the other stays as it "
             f"is, the difference is nil, or the pair has fewer than 2 {unit}. Probe steps are the other "
             "dial (`validate-probe`)."
             + (f" One more probe seed for every recipe costs {seed_hours:.2f} CPU-h here."
                if unit == "probe seeds" and seed_hours else ""))

    def sd(variance: float | None) -> str:
        return "–" if variance is None else f"{math.sqrt(variance):.3f}"

    doc.table(["pair", "difference", f"{ranking.confidence:.0%} CI", unit, f"SD between {unit}",
               "SD between problems", f"{unit} needed", "problems needed"],
              [[f"{s.a} − {s.b}", f"{s.difference:+.3f}",
                "[{1:+.3f}, {2:+.3f}]".format(*ranking.difference_ci(s.a, s.b)), str(s.n_units),
                sd(s.unit_var), sd(s.problem_var), _count(s.units_needed), _count(s.problems_needed)]
               for s in budgets])


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _replica_section(doc: Doc, ranking: Ranking) -> None:
    """Each recipe's score per mid-training replica, and whether the order holds in each."""
    replicated = [r for r in ranking.recipes if len(r.per_replica) > 1]
    if not replicated:
        return
    doc.heading("Mid-training replicas", 3)
    replicas = sorted({k for r in replicated for k in r.per_replica})
    doc.para(f"Each recipe mid-trained once per seed ({', '.join(map(str, replicas))}), every replica "
             f"probed with every probe seed. {ranking.score_name} per replica (mean over probe seeds) "
             "and the between-replica spread (max − min): the variation a single mid-training run "
             "hides, and which the intervals above include.")
    doc.table(["recipe"] + [f"replica {k}" for k in replicas] + ["spread"],
              [[r.recipe] + [_fmt(r.per_replica.get(k)) for k in replicas] + [f"{r.replica_spread:.3f}"]
               for r in replicated])
    overall = [r.recipe for r in replicated]
    holds = []
    for k in replicas:
        order = sorted((r for r in replicated if k in r.per_replica), key=lambda r: -r.per_replica[k])
        holds.append(f"replica {k}: {' > '.join(r.recipe for r in order)}"
                     + (" (the overall order)" if [r.recipe for r in order] == overall else " (differs)"))
    doc.para("Order within each replica — " + "; ".join(holds) + ".")


def _cheap_signals(doc: Doc, results: SweepResults, ranking: Ranking) -> None:
    recipes = [r.recipe for r in ranking.recipes]
    outcome = {r.recipe: r.score for r in ranking.recipes}
    signals: dict[str, dict[str, float]] = {}
    for recipe in recipes:
        runs = [p for p in results.probes if p.recipe == recipe]
        for k in ("1", "8", "64"):
            vals = [p.profile.get("pass_at_k", {}).get(k) for p in runs]
            if all(v is not None for v in vals):
                signals.setdefault(f"pass@{k}", {})[recipe] = float(np.mean(vals))
        fewshot = [p.profile.get("fewshot", {}).get("acc") for p in runs]
        if all(v is not None for v in fewshot):
            signals.setdefault("few-shot acc", {})[recipe] = float(np.mean(fewshot))
        signals.setdefault("step-0 held-out acc", {})[recipe] = float(np.mean([p.accuracy[0] for p in runs]))
    shared_val = results.validation_loss(recipes)
    if shared_val is not None:
        corpora, losses = shared_val
        signals[f"−val loss ({', '.join(corpora)})"] = {r: -float(v) for r, v in zip(recipes, losses)}
    doc.heading("Cheap signals")
    doc.para("Spearman rank correlation between signals measured before RL and the probe outcome "
             f"({ranking.score_name}) across recipes: which cheap signal predicts RL-amenability here.")
    rows = []
    for name, values in signals.items():
        common = [r for r in recipes if r in values]
        rho = spearman([values[r] for r in common], [outcome[r] for r in common]) if len(common) > 2 else float("nan")
        rows.append([name, _fmt(rho, 2)] + [_fmt(values.get(r)) for r in recipes])
    doc.table(["signal", "ρ vs outcome"] + recipes, rows)


def _decision_section(doc: Doc, decision) -> None:
    """How often cheaper deciders order recipe pairs as the long-run target does (pipelines.decision)."""
    from pipelines.decision import format_accuracy

    target, probe, level = decision.target_setup, decision.probe, f"{decision.confidence:.0%}"
    doc.heading("Decision accuracy")
    doc.para(f"Target: the probe run for {target['steps']} steps on seeds {target['seeds']}, evaluated on its own "
             f"{target['eval_problems']} held-out problems (this probe: {probe['steps']} steps, seeds "
             f"{probe['seeds']}, {probe['eval_problems']} eval problems). Score {decision.score} for both. "
             f"The target separates **{len(decision.separated)}** recipe pairs ({level} CI of the difference "
             f"excluding 0); the **{len(decision.ties)}** it cannot order (target ties) are not counted"
             + (": " + "; ".join(f"{a} ~ {b}" for a, b in decision.ties) if decision.ties else "") + ".")
    doc.table(["target rank", "recipe", decision.score, f"{level} CI"],
              [[str(i + 1), t["recipe"], f"{t['score']:.3f}", f"[{t['ci'][0]:.3f}, {t['ci'][1]:.3f}]"]
               for i, t in enumerate(decision.target)])
    full, cheapest, signal = decision.full_probe, decision.cheapest(), decision.best_signal()
    if not decision.separated:
        summary = ("The target separates no pair, so no decider has a decision accuracy here: a longer "
                   "target, more target seeds or more distinct recipes would. ")
    else:
        summary = (f"The whole probe orders {format_accuracy(full.accuracy)} of the separated pairs as the target does "
                   f"({level} CI {format_accuracy(full.ci[0])}–{format_accuracy(full.ci[1])})"
                   + (f"; it disagrees on {'; '.join(f'{a} > {b}' for a, b in decision.disagreements)}"
                      if decision.disagreements else "") + ". ")
    best = decision.best_budget()
    if cheapest:
        summary += f"The cheapest probe budget reaching 0.9 is **{cheapest.name}** ({cheapest.cpu_hours:.3f} CPU-h). "
    elif best:
        summary += (f"No probe budget reaches 0.9; the best reaches {format_accuracy(best.accuracy)} "
                    f"(**{best.name}**, {best.cpu_hours:.3f} CPU-h). ")
    if signal:
        summary += f"The best cheap signal is **{signal.name}** ({format_accuracy(signal.accuracy)})."
    doc.para(summary)
    doc.para("Decision accuracy: share of the separated pairs a decider orders as the target (a tie counts "
             "0.5). Probe budgets reuse the probe's logged evals (its first steps, a subset of its seeds and "
             "eval problems; point estimate averaged over the subsets); CPU-h is the probe CPU time of all "
             "recipes at that budget, from the stage timings. Signal CPU-h: what measuring it costs beyond "
             f"the checkpoints. {level} CIs: bootstrap of the separated pairs, each draw scoring a replicate of the "
             "decider (its seeds and eval problems resampled) against the target's order, as `validate-probe "
             "--curves` does.")
    rows = [[d.name, f"{d.cpu_hours:.3f}", format_accuracy(d.accuracy),
             f"[{format_accuracy(d.ci[0])}, {format_accuracy(d.ci[1])}]"]
            for d in sorted(decision.budgets, key=lambda d: d.cpu_hours) + decision.signals]
    doc.table(["decider", "CPU-h", "decision accuracy", f"{level} CI"], rows)
    if decision.separated:  # with no pair to decide there is no accuracy to plot
        doc.figure(_decision_figure(decision))


def _decision_figure(decision) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    steps = sorted({b.steps for b in decision.budgets})
    cmap, markers = plt.get_cmap("viridis"), "os^Dv<>p"
    seeds = sorted({b.seeds for b in decision.budgets})
    for b in decision.budgets:
        color = cmap(steps.index(b.steps) / max(len(steps) - 1, 1))
        # the point (a mean over seed and problem subsets) may sit outside the bootstrap interval
        ax.errorbar(b.cpu_hours, b.accuracy, yerr=[[max(b.accuracy - b.ci[0], 0)], [max(b.ci[1] - b.accuracy, 0)]],
                    fmt=markers[seeds.index(b.seeds) % len(markers)], color=color,
                    ms=3 + 5 * b.eval_problems / decision.probe["eval_problems"], elinewidth=0.6, alpha=0.8)
    for s in decision.signals:
        ax.plot(max(s.cpu_hours, 1e-4), s.accuracy, "x", color="#c8553d", ms=6)
        ax.annotate(s.name, (max(s.cpu_hours, 1e-4), s.accuracy), fontsize=6, xytext=(3, 2),
                    textcoords="offset points", color="#8a3a2a")
    handles = [plt.Line2D([], [], ls="", marker="o", color=cmap(i / max(len(steps) - 1, 1)), label=f"{s} steps")
               for i, s in enumerate(steps)]
    handles += [plt.Line2D([], [], ls="", marker=markers[i % len(markers)], color="gray", label=f"{k} seed(s)")
                for i, k in enumerate(seeds)]
    ax.axhline(0.9, color="gray", lw=0.6, ls="--")
    ax.set_xscale("log")
    costs = [max(d.cpu_hours, 1e-4) for d in [*decision.budgets, *decision.signals]]
    ax.set_xlim(min(costs) / 2, max(costs) * 2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("decision accuracy", fontsize=8)
    _style(ax, "Decision accuracy against the long-run target (marker size = eval problems, × = cheap signal)",
           "CPU-hours (log)")
    ax.legend(handles=handles, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
    return Figure("decision_accuracy", "Decision accuracy of probe budgets and cheap signals against CPU-hours "
                  "(bars: bootstrap CI; signals that cost nothing beyond the checkpoint sit at the left edge).",
                  _png(fig))


def _unreadable(curation: dict) -> str:
    """Unreadable source lines: the total, and the worst file with its first bad line."""
    files = curation.get("bad_lines_by_file") or []
    if not files:
        return str(curation.get("corrupt_lines", 0))
    worst = files[0]
    more = f" (+{len(files) - 1} more files)" if len(files) > 1 else ""
    return (f"{curation.get('corrupt_lines', 0)}: {Path(worst['file']).name} {worst['bad_lines']}/{worst['lines']}, "
            f"first at line {worst['first_bad_line']}{more}")


def _data_section(doc: Doc, results: SweepResults) -> None:
    if not results.curation:
        return
    doc.heading("Data")
    rows = []
    for name, info in sorted(results.curation.items()):
        c = info.read_json("curation.json")
        top = "; ".join(_drop_summary(step, counts) for step, counts in c.get("dropped", {}).items()
                        if counts.get("total"))
        contaminated = sum(c.get("contaminated", {}).values()) if c.get("contaminated") else 0
        docs_in, docs_out = c.get("docs_in"), c.get("docs_out")
        kept = f"{docs_out / docs_in:.1%}" if docs_in else "–"
        rows.append([name, str(docs_in), str(docs_out), kept, top or "–", str(contaminated),
                     f"{c.get('tokens', 0):,}", _unreadable(c)])
    doc.table(["corpus", "docs in", "docs out", "kept", "dropped by step (top reasons)", "contaminated",
               "tokens", "unreadable lines (skipped)"], rows)
    mix_rows = []
    for info in results.midtrain:
        cfg = info.manifest["config"]
        parts = []
        for corpus, weight in sorted(cfg["mix"].items()):
            available = results.curation[corpus].read_json("curation.json").get("tokens", 0) if corpus in results.curation else 0
            epochs = cfg["train"]["tokens"] * weight / available if available else float("nan")
            parts.append(f"{corpus} {weight:.0%} ({epochs:.2g} ep)")  # 2 significant digits: a small share is not 0.0
        mix_rows.append([_stage_name(info), f"{cfg['train']['tokens']:,}", "; ".join(parts)])
    doc.heading("Token mix", 3)
    doc.table(["stage", "tokens", "mix (epochs of the curated corpus)"], mix_rows)


def _drop_summary(step: str, counts: dict) -> str:
    reasons = sorted(((k, v) for k, v in counts.items() if k != "total"), key=lambda kv: -kv[1])[:2]
    detail = f" ({', '.join(f'{k} {v}' for k, v in reasons)})" if reasons else ""
    return f"{step} {counts['total']}{detail}"


def _training_section(doc: Doc, results: SweepResults) -> None:
    fig = _loss_figure(results)
    if not fig:
        return
    doc.heading("Training")
    doc.figure(fig)
    corpora = sorted({n.split("/")[1] for m in [results.base, *results.midtrain] if m
                      for n in m.metrics if n.startswith("val/") and n.endswith("/loss")})
    rows = []
    for info in [results.base, *results.midtrain]:
        if info:
            rows.append([_stage_name(info), _fmt(_last(info.metrics.get("train/loss")))]
                        + [_fmt(_last(info.metrics.get(f"val/{c}/loss"))) for c in corpora])
    doc.table(["stage", "final train loss"] + [f"val {c}" for c in corpora], rows)


# -- rendering ----------------------------------------------------------------

def to_markdown(doc: Doc, figure_dir: str) -> str:
    out = []
    for kind, value in doc.blocks:
        if kind == "h":
            level, text = value
            out.append(f"{'#' * level} {text}\n")
        elif kind == "p":
            out.append(f"{value}\n")
        elif kind == "table":
            header, rows = value
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out.extend("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)
            out.append("")
        elif kind == "figure":
            out.append(f"![{value.caption}]({figure_dir}/{value.name}.png)\n")
        elif kind == "samples":
            for s in value:
                out.append(f"**{s['title']}** — reward {s.get('reward')}, correct {s.get('acc')}\n")
                out.append("```\n" + s.get("prompt", "") + s.get("response", "")[:600] + "\n```\n")
    return "\n".join(out)


_CSS = """
body{font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:#1d2330;max-width:1120px;margin:32px auto;padding:0 24px;background:#fbfbfd}
h1{font-size:26px;margin:0 0 6px} h2{font-size:19px;margin:34px 0 10px;padding-bottom:4px;
 border-bottom:1px solid #e3e6ee} h3{font-size:15px;margin:22px 0 8px;color:#444}
p{margin:8px 0} code{background:#eef0f5;padding:1px 5px;border-radius:4px;font-size:13px}
table{border-collapse:collapse;margin:10px 0 16px;font-size:13px;background:#fff;
 box-shadow:0 1px 2px rgba(0,0,0,.06);border-radius:6px;overflow:hidden}
th{background:#f0f2f7;text-align:left;font-weight:600}
th,td{padding:6px 10px;border-bottom:1px solid #edf0f5;vertical-align:top}
tr:last-child td{border-bottom:none} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:12px 0 20px;background:#fff;padding:10px;border-radius:6px;
 box-shadow:0 1px 2px rgba(0,0,0,.06)} figure img{max-width:100%}
figcaption{font-size:12px;color:#667;margin-top:4px}
.sample{background:#fff;border-left:3px solid #8aa4d6;padding:8px 12px;margin:8px 0;
 border-radius:4px;font-size:13px} .sample pre{white-space:pre-wrap;margin:6px 0 0;
 font:12px/1.45 ui-monospace,SFMono-Regular,Menlo,monospace;max-height:220px;overflow:auto}
.good{border-left-color:#3c9a5f} .bad{border-left-color:#c8553d}
.verdict{background:#eef5ff;border-radius:6px;padding:10px 14px}
"""


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(doc: Doc, title: str) -> str:
    body = []
    paragraphs = 0
    for kind, value in doc.blocks:
        if kind == "h":
            level, text = value
            body.append(f"<h{level}>{html.escape(text)}</h{level}>")
        elif kind == "p":
            paragraphs += 1
            cls = ' class="verdict"' if paragraphs == 1 else ""
            body.append(f"<p{cls}>{_inline(value)}</p>")
        elif kind == "table":
            header, rows = value
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            cells = "".join(
                "<tr>" + "".join(
                    f'<td class="num">{html.escape(c)}</td>' if _numeric(c) else f"<td>{_inline(c)}</td>"
                    for c in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif kind == "figure":
            data = base64.b64encode(value.png).decode()
            body.append(f'<figure><img alt="{html.escape(value.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(value.caption)}</figcaption></figure>")
        elif kind == "samples":
            for s in value:
                cls = "good" if s.get("acc") else "bad"
                body.append(f'<div class="sample {cls}"><b>{html.escape(s["title"])}</b> · reward '
                            f'{s.get("reward")} · correct {s.get("acc")}<pre><span style="color:#778">'
                            f'{html.escape(s.get("prompt", ""))}</span>{html.escape(s.get("response", "")[:1500])}'
                            "</pre></div>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")


def _numeric(cell: str) -> bool:
    return bool(cell) and cell.replace(".", "").replace("-", "").replace("+", "").replace(",", "") \
        .replace("%", "").replace("–", "").strip().isdigit()


def write(doc: Doc, out_dir: Path, title: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    for fig in doc.figures:
        (fig_dir / f"{fig.name}.png").write_bytes(fig.png)
    md, page = out_dir / "report.md", out_dir / "report.html"
    # write-then-rename so a reader never sees half a report
    for path, text in ((md, to_markdown(doc, "figures")), (page, to_html(doc, title))):
        atomic_write(path, text)
    return md, page
