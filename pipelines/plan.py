"""From a sweep to the stage DAG: every stage run keyed by its config and inputs.

Shared work is shared by construction: two recipes with the same stable
stage produce the same StageRun (same config, same inputs, same key), so the
store trains it once and both decay branches fork from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_recipes.filters import FILTER_FILE_ARGUMENTS, resolved_filter_settings
from data_recipes.sources import HFSource, expand_paths
from data_recipes.toyworld import ToyWorldConfig
from midtrain.config import MidtrainSettings, phase_schedule, phase_warmup
from midtrain.spec import MODEL_PRESETS
from pipelines import preflight
from pipelines.code_versions import code_versions
from pipelines.run_configs import (CurateRun, ExternalRun, LevelPick, MidtrainRun, ProblemSource, ProblemsRun,
                                   ProbeRun, RunConfig, SelectionRun, TokenizerRun)
from pipelines.store import StageRun
from pipelines.sweep import ExecutorSection, ProblemSet, StageMix, Sweep, probe_spec, resolve_path
from rl_probe.verl_config import VerlCluster

BASE_RECIPE = "base"  # the pseudo-recipe "no mid-training" used as the report's reference


def config_changes(old: Any, new: Any, path: str = "") -> list[str]:
    """The fields that differ between two resolved configs, as `dotted.path old → new`."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for name in sorted(set(old) | set(new), key=str)
                for change in config_changes(old.get(name, _ABSENT), new.get(name, _ABSENT),
                                             f"{path}.{name}" if path else str(name))]
    return [] if old == new else [f"{path} {_shown(old)} → {_shown(new)}"]


_ABSENT = object()


def _shown(value: Any, width: int = 40) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


def why_run(run: StageRun, previous: dict | None) -> str:
    """Why a run that is not in the store will run: new, its stage's code version and which config
    fields changed since the last run of the same stage and name, or which inputs did."""
    if previous is None:
        return "new"
    old, new = ({name: value for name, value in config.items() if name != "code_version"}
                for config in (previous["config"], run.canonical_config))
    versions = previous["config"].get("code_version"), run.canonical_config.get("code_version")
    reasons = [f"code changed (version {versions[0]} → {versions[1]})"] if versions[0] != versions[1] else []
    if changed := config_changes(old, new):
        reasons.append("config: " + "; ".join(changed))
    if reasons:
        return "; ".join(reasons)
    inputs = sorted(role for role, dep in run.inputs.items() if previous["inputs"].get(role) != dep.ref)
    return "input changed: " + ", ".join(inputs) if inputs else "new"


def fingerprint(path: Path) -> str:
    """Content fingerprint of a user file or directory (large files by size and mtime)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return files_fingerprint(files, path.parent if path.is_file() else path)


def files_fingerprint(files: list[Path], root: Path, read_up_to: int = 4 << 20) -> str:
    """Content fingerprint of files named relative to `root`: files up to `read_up_to` bytes by
    their bytes, larger ones (model weights) by size and mtime."""
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(str(file.relative_to(root)).encode())
        if stat.st_size <= read_up_to:
            digest.update(file.read_bytes())
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def source_fingerprint(source) -> str | None:
    """The fingerprint of a corpus source's local files, each by name, size and mtime (planning never
    reads a corpus, whose thousands of shards may each be small): the files its paths or globs match
    now (a new shard re-keys too), or an HF source's save_to_disk directory and data files. None for
    toy sources and hub datasets, which have no local files to read before they are loaded."""
    if patterns := getattr(source, "paths", None):
        files = [Path(f) for f in expand_paths(patterns, "")]  # as curation reads them (preflight: some match)
    elif isinstance(source, HFSource):
        local = Path(source.path).expanduser()
        files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else []
        files += [Path(f) for pattern in source.data_files or [] for f in preflight.source_files(pattern)]
    else:
        return None
    return files_fingerprint([f.resolve() for f in files], Path("/"), read_up_to=0) if files else None


def external(path: Path, label: str) -> StageRun:
    """A user-provided artifact (HF model, tokenizer, file) as a node of the DAG."""
    return StageRun("external", ExternalRun(path=str(path), fingerprint=fingerprint(path)), label=label)


@dataclass
class Plan:
    """The stage DAG of one sweep (or of a checkpoint sweep job, which has only probes)."""

    name: str
    executor: ExecutorSection
    problems: StageRun
    probes: dict[tuple[str, int | None, int], StageRun]  # (recipe, replica, probe seed) -> run
    curation_executor: dict = field(default_factory=dict)
    base: StageRun | None = None
    # recipe -> mid-training replica (its seed; None: the sweep has no midtrain.seeds) -> [stable, decay?]
    midtrain: dict[str, dict[int | None, list[StageRun]]] = field(default_factory=dict)
    roles: dict[StageRun, list[dict]] = field(default_factory=dict)
    # the same keys -> the probe's random-reward control (probe.control), never ranked
    controls: dict[tuple[str, int | None, int], StageRun] = field(default_factory=dict)

    def role(self, run: StageRun, **info) -> None:
        self.roles.setdefault(run, []).append(info)

    def runs(self) -> list[StageRun]:
        """Every stage run, dependencies first, each once."""
        ordered: list[StageRun] = []
        seen: set[str] = set()

        def visit(run: StageRun) -> None:
            if run.ref in seen:
                return
            for dep in run.inputs.values():
                visit(dep)
            seen.add(run.ref)
            ordered.append(run)

        visit(self.problems)
        for run in [*self.probes.values(), *self.controls.values()]:
            visit(run)
        return ordered

    def checkpoints(self) -> list[tuple[str, int | None, StageRun]]:
        """(recipe, replica, final checkpoint) of every probed recipe replica."""
        return list(dict.fromkeys((recipe, replica, run.inputs["checkpoint"])
                                  for (recipe, replica, _), run in self.probes.items()))

    def add_probes(self, recipe: str, checkpoint: StageRun, spec, seeds: list[int],
                   engine_options: VerlCluster | None = None, replica: int | None = None,
                   keep_policy: bool = False, control: str | None = None,
                   device: str = "cpu") -> None:
        """Probe runs of one checkpoint, one per seed; `control` (a probe.control value) marks them as
        that control's runs (kept apart from the ranked probes, named in their roles and labels)."""
        for seed in seeds:
            config = ProbeRun(spec=spec, spec_hash=spec.content_hash(), seed=seed, keep_policy=keep_policy,
                              # how verl lays the run out (GPUs, nodes, rollout engine): the options the
                              # sweep wrote, defaults not filled in, as keys always held them
                              engine_options=(engine_options or VerlCluster()).model_dump(exclude_unset=True)
                              if spec.engine == "verl" else None,
                              device=device if spec.engine == "embedded" else "cpu")
            kind = f"{control.replace('_', '-')} probe" if control else "probe"  # "random-reward probe"
            run = stage_run("probe", config, {"checkpoint": checkpoint, "problems": self.problems},
                            label=f"{kind} {recipe}{_replica_label(replica)} seed {seed}")
            (self.controls if control else self.probes)[(recipe, replica, seed)] = run
            self.role(run, kind="probe", recipe=recipe, seed=seed, replica=replica,
                      **({"control": control} if control else {}))


def _replica_label(replica: int | None) -> str:
    return "" if replica is None else f" replica {replica}"


def _blend_inputs(mix: StageMix, curate: dict[str, StageRun]) -> dict[str, StageRun]:
    return {f"corpus:{name}": curate[name] for name in sorted(mix.mix)}


def stage_run(stage: str, config: RunConfig, inputs: dict[str, StageRun] | None = None, label: str = "") -> StageRun:
    """A stage run whose key covers its stage's code version next to its resolved config."""
    return StageRun(stage, config.model_copy(update={"code_version": code_versions()[stage]}), inputs or {},
                    label=label)


def _curation_config(name: str, corpus, toy_world, source_files: str | None) -> CurateRun:
    """A curation run's config: the corpus config with every default, the preset it resolves
    to and every argument of that preset's filter blocks (a changed threshold re-curates)."""
    files = {block: fingerprint(Path(corpus.curation.filters[block][argument]))
             for block, argument in FILTER_FILE_ARGUMENTS.items()
             if (corpus.curation.filters.get(block) or {}).get(argument)}
    return CurateRun(corpus=name, corpus_config=corpus, preset=corpus.preset(),
                     filters=resolved_filter_settings(corpus.preset(), corpus.curation.filters), toy_world=toy_world,
                     filter_files=files or None,  # only where a filter reads a file
                     source_files=source_files)  # re-curate when the corpus files change


def _phase_config(phase: str, stage: StageMix, midtrain: MidtrainSettings, lr: float | None,
                  **base_model) -> MidtrainRun:
    """A midtrain stage's config: TrainConfig with every default, this stage's budget and LR,
    and the LR schedule and warmup its phase runs (stable-then-decay as the field runs it;
    midtrain.config). Threads are the stage's own setting (None: the executor's)."""
    train = midtrain.train_config(
        tokens=stage.tokens, lr=lr or midtrain.lr,
        schedule=phase_schedule(phase, stage.schedule, midtrain.schedule),
        warmup_tokens=phase_warmup(phase, midtrain.warmup_tokens))
    return MidtrainRun(phase=phase, train=train, threads=stage.threads, nproc_per_node=midtrain.nproc_per_node,
                       mix=stage.mix, **base_model)


def _corpus_paths_resolved(corpus, here: Path):
    """A corpus whose source files (`source.paths`) and filter files (a classifier's model) are
    relative to the sweep file, as every other path in a sweep is, rather than to wherever
    midprobe was started."""
    update = {}
    if paths := getattr(corpus.source, "paths", None):
        update["source"] = corpus.source.model_copy(update={"paths": [str(resolve_path(p, here)) for p in paths]})
    filters = dict(corpus.curation.filters)
    for block, argument in FILTER_FILE_ARGUMENTS.items():
        if (filters.get(block) or {}).get(argument):
            filters[block] = {**filters[block], argument: str(resolve_path(filters[block][argument], here))}
    if filters != corpus.curation.filters:
        update["curation"] = corpus.curation.model_copy(update={"filters": filters})
    return corpus.model_copy(update=update)


def build_plan(sweep: Sweep, source: Path) -> Plan:
    here = source.parent
    probe_cfg = sweep.probe
    toy_world = sweep.toy_world
    problems = problems_run(toy_world, probe_cfg.train_set, probe_cfg.eval_set, here)
    corpora = {name: _corpus_paths_resolved(corpus, here) for name, corpus in sweep.corpora.items()}
    source_files = {name: source_fingerprint(corpus.source) for name, corpus in corpora.items()}  # once each

    if sweep.tokenizer.path:
        tokenizer = external(resolve_path(sweep.tokenizer.path, here), "tokenizer")
    elif sweep.base.hf_path and not sweep.tokenizer.train_on:
        tokenizer = external(resolve_path(sweep.base.hf_path, here), "tokenizer (base model's)")
    else:
        trained_on = sorted(sweep.tokenizer.train_on)
        files = {name: source_files[name] for name in trained_on if source_files[name]}
        config = TokenizerRun(vocab_size=sweep.tokenizer.vocab_size, toy_world=toy_world,
                              sources={name: corpora[name].source.model_dump(mode="json") for name in trained_on},
                              source_files=files or None)  # only for file sources
        tokenizer = stage_run("tokenizer", config, label="tokenizer")

    benchmarks = [external(resolve_path(b, here), f"benchmark {b}") for b in probe_cfg.benchmarks]
    curate = {}
    for name, corpus in corpora.items():
        inputs = {"tokenizer": tokenizer, "problems": problems}
        inputs.update({f"benchmark:{i}": b for i, b in enumerate(benchmarks)})
        curate[name] = stage_run("curate", _curation_config(name, corpus, toy_world, source_files[name]),
                                 inputs, label=f"curate {name}")

    if sweep.base.hf_path:
        base = external(resolve_path(sweep.base.hf_path, here), "base model")
    else:
        pretrain = sweep.base.pretrain
        base = stage_run("midtrain", _phase_config("pretrain", pretrain, sweep.midtrain, pretrain.lr,
                                                   model_preset=sweep.base.preset,
                                                   model=MODEL_PRESETS[sweep.base.preset]),
                         {"tokenizer": tokenizer, **_blend_inputs(pretrain, curate)},
                         label=f"pretrain base ({sweep.base.preset})")

    midtrain: dict[str, dict[int | None, list[StageRun]]] = {}
    for rname, recipe in sweep.recipes.items():
        midtrain[rname] = {}
        for replica, settings in sweep.midtrain.replicas().items():
            stable = stage_run("midtrain", _phase_config("stable" if recipe.decay else "full", recipe.stable,
                                                         settings, recipe.stable.lr),
                               {"init": base, "tokenizer": tokenizer, **_blend_inputs(recipe.stable, curate)},
                               label=f"midtrain {rname} stable{_replica_label(replica)}")
            stages = [stable]
            if recipe.decay:  # continues at the stable stage's LR (the sweep refuses another)
                stages.append(stage_run("midtrain", _phase_config("decay", recipe.decay, settings,
                                                                  stable.config.train.lr),
                                        {"init": stable, "tokenizer": tokenizer,
                                         **_blend_inputs(recipe.decay, curate)},
                                        label=f"midtrain {rname} decay{_replica_label(replica)}"))
            midtrain[rname][replica] = stages

    plan = Plan(sweep.name, sweep.executor, problems, {}, sweep.curation_executor.model_dump(), base, midtrain)
    plan.role(problems, kind="problems")
    plan.role(tokenizer, kind="tokenizer")
    for name, run in curate.items():
        plan.role(run, kind="curate", corpus=name)
    plan.role(base, kind="base")
    for rname, replicas in midtrain.items():
        for replica, stages in replicas.items():
            for stage in stages:
                plan.role(stage, kind="midtrain", recipe=rname, phase=stage.config.phase,
                          replica=replica)
    spec = probe_spec(sweep, source)
    # probes read the selected problems; curation decontaminates against the whole pool, so
    # how the probe picks its problems never re-keys curation or mid-training
    measured_with = spec if probe_cfg.difficulty_max_response_length is None else spec.model_copy(
        update={"max_response_length": probe_cfg.difficulty_max_response_length, "length_schedule": None})
    plan.problems = selection_run(problems, probe_cfg.train_set, probe_cfg.eval_set, probe_cfg.difficulty,
                                  auto={"spec": measured_with, "k": probe_cfg.difficulty_k,
                                        "target": list(probe_cfg.difficulty_target), "checkpoint": base})
    plan.role(plan.problems, kind="difficulty" if probe_cfg.difficulty == "auto" else "problems")
    probed = [(BASE_RECIPE, None, base)] if probe_cfg.include_base else []
    probed += [(recipe, replica, stages[-1]) for recipe, replicas in midtrain.items()
               for replica, stages in replicas.items()]
    for recipe, replica, checkpoint in probed:
        plan.add_probes(recipe, checkpoint, spec, probe_cfg.seeds, probe_cfg.verl, replica, probe_cfg.keep_policy,
                        device=probe_cfg.device)
        if probe_cfg.control:
            plan.add_probes(recipe, checkpoint, spec.with_random_reward(), probe_cfg.control_seeds or probe_cfg.seeds,
                            probe_cfg.verl, replica, probe_cfg.keep_policy, probe_cfg.control,
                            probe_cfg.device)
    return plan


def problems_run(toy_world, train_set: ProblemSet, eval_set: ProblemSet, here: Path) -> StageRun:
    """The pool the probe's train/eval problems are chosen from, and that every corpus is
    decontaminated against: a toy set's n problems at *every* difficulty level of the world,
    or a user file whole (keyed by its content fingerprint). Which levels the probe uses is
    the selection's business (`selection_run`), so it never re-keys curation."""
    def source(problem_set: ProblemSet) -> ProblemSource:
        if problem_set.path:
            path = resolve_path(problem_set.path, here)
            return ProblemSource(path=str(path), fingerprint=fingerprint(path), fields=problem_set.fields)
        return ProblemSource(toy_split=problem_set.toy_split, n=problem_set.n)

    return stage_run("problems", ProblemsRun(toy_world=toy_world, train_set=source(train_set),
                                             eval_set=source(eval_set)), label="probe/eval problem pool")


def selection_run(pool: StageRun, train_set: ProblemSet, eval_set: ProblemSet, difficulty: str,
                  auto: dict | None = None) -> StageRun:
    """The probe's problems, picked from the pool: at the sets' difficulty levels (fixed), or at
    the levels where the base's pass@k lies in the target band (auto: SimpleRL-Zoo's difficulty
    control, among the sets' levels if they name any). A toy set takes n problems in equal
    shares of its levels; a file set every problem at its levels."""
    def picked(problem_set: ProblemSet) -> LevelPick:
        return LevelPick(levels=problem_set.difficulty, n=None if problem_set.path else problem_set.n)

    inputs = {"pool": pool}
    measured = {}
    if difficulty == "auto":
        inputs["checkpoint"] = auto.pop("checkpoint")
        measured = auto
    config = SelectionRun(difficulty=difficulty, train_set=picked(train_set), eval_set=picked(eval_set), **measured)
    return stage_run("select_problems", config, inputs,
                     label="difficulty control" if difficulty == "auto" else "probe/eval problems")


def build_checkpoint_plan(name: str, checkpoints: dict[str, Path], spec, seeds: list[int],
                          train_set: ProblemSet, eval_set: ProblemSet, executor: ExecutorSection,
                          toy_world: dict | None = None, keep_policy: bool = False, device: str = "cpu") -> Plan:
    """A checkpoint sweep job: probe HF checkpoints made anywhere, no sweep file needed."""
    pool = problems_run(ToyWorldConfig(**(toy_world or {})), train_set, eval_set, Path.cwd())
    plan = Plan(name, executor, selection_run(pool, train_set, eval_set, "fixed"), {})
    for run in (pool, plan.problems):
        plan.role(run, kind="problems")
    for label, path in checkpoints.items():
        plan.add_probes(label, external(path, f"checkpoint {label}"), spec, seeds, keep_policy=keep_policy,
                        device=device)
    return plan
