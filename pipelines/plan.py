"""From a sweep to the stage DAG: every stage run keyed by its config and inputs.

Shared work is shared by construction: two recipes with the same stable
stage produce the same StageRun (same config, same inputs, same key), so the
store trains it once and both decay branches fork from it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.store import StageRun
from pipelines.sweep import (
    ExecutorSection,
    ProblemSet,
    StageMix,
    Sweep,
    probe_spec,
    resolve_path,
    split_nproc,
    split_replicas,
)

BASE_RECIPE = "base"  # the pseudo-recipe "no mid-training" used as the report's reference


def fingerprint(path: Path) -> str:
    """Content fingerprint of a user file or directory (large files by size and mtime)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        digest.update(str(file.relative_to(path.parent if path.is_file() else path)).encode())
        if stat.st_size <= 4 << 20:
            digest.update(file.read_bytes())
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def external(path: Path, label: str) -> StageRun:
    """A user-provided artifact (HF model, tokenizer, file) as a node of the DAG."""
    return StageRun("external", {"path": str(path), "fingerprint": fingerprint(path)}, label=label)


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
        for run in self.probes.values():
            visit(run)
        return ordered

    def checkpoints(self) -> list[tuple[str, int | None, StageRun]]:
        """(recipe, replica, final checkpoint) of every probed recipe replica."""
        return list(dict.fromkeys((recipe, replica, run.inputs["checkpoint"])
                                  for (recipe, replica, _), run in self.probes.items()))

    def add_probes(self, recipe: str, checkpoint: StageRun, spec, seeds: list[int],
                   engine_options: dict | None = None, replica: int | None = None,
                   keep_policy: bool = False) -> None:
        for seed in seeds:
            config = {"spec": spec.model_dump(mode="json"), "spec_hash": spec.content_hash(), "seed": seed}
            if spec.engine == "verl":  # GPUs, nodes, rollout engine: how verl lays the run out
                config["engine_options"] = engine_options or {}
            if keep_policy:  # the run's artifacts include the final policy (absent: the keys of before)
                config["keep_policy"] = True
            run = StageRun("probe", config,
                           {"checkpoint": checkpoint, "problems": self.problems},
                           label=f"probe {recipe}{_replica_label(replica)} seed {seed}")
            self.probes[(recipe, replica, seed)] = run
            self.role(run, kind="probe", recipe=recipe, seed=seed, replica=replica)


def _replica_label(replica: int | None) -> str:
    return "" if replica is None else f" replica {replica}"


def _replica_settings(settings: dict, seeds: list[int] | None) -> dict[int | None, dict]:
    """The midtrain settings of each replica. A replica's seed enters its stages' keys unless
    it is TrainConfig's default seed: that replica is the sweep's run without `seeds`, and
    adding replicas to a sweep reuses it."""
    from midtrain.train import TrainConfig

    default = TrainConfig.model_fields["seed"].default
    if seeds is None:
        return {None: settings}
    return {seed: settings if seed == default else {**settings, "seed": seed} for seed in seeds}


def _blend_inputs(mix: StageMix, curate: dict[str, StageRun]) -> dict[str, StageRun]:
    return {f"corpus:{name}": curate[name] for name in sorted(mix.mix)}


def _resolved(toy_world: dict) -> dict:
    """The toy-world config as it enters stage keys: every default and the generator version."""
    from data_recipes.toyworld import ToyWorldConfig

    return ToyWorldConfig(**toy_world).model_dump()


def _keyed_midtrain(midtrain: dict) -> dict:
    """The midtrain settings as they enter stage keys. nproc_per_node is in them when above 1
    (the processes beyond the tensor-parallel ones are data-parallel replicas, which multiply
    the global batch), and left out at its default 1, so keys stay those of sweeps without it."""
    settings, nproc = split_nproc(midtrain)
    return midtrain if nproc != 1 else settings


def build_plan(sweep: Sweep, source: Path) -> Plan:
    here = source.parent
    probe_cfg = sweep.probe
    settings, replica_seeds = split_replicas(sweep.midtrain)
    sweep = sweep.model_copy(update={"toy_world": _resolved(sweep.toy_world),
                                     "midtrain": _keyed_midtrain(settings)})
    train_set, eval_set = probe_cfg.train_set, probe_cfg.eval_set
    if probe_cfg.difficulty == "auto":  # a pool with n problems at every level to choose from
        levels = len(train_set.difficulty or sweep.toy_world["difficulties"])
        train_set = train_set.model_copy(update={"n": train_set.n * levels})
        eval_set = eval_set.model_copy(update={"n": eval_set.n * levels})
    problems = problems_run(sweep.toy_world, train_set, eval_set, here)

    if sweep.tokenizer.path:
        tokenizer = external(resolve_path(sweep.tokenizer.path, here), "tokenizer")
    elif sweep.base.hf_path and not sweep.tokenizer.train_on:
        tokenizer = external(resolve_path(sweep.base.hf_path, here), "tokenizer (base model's)")
    else:
        tokenizer = StageRun("tokenizer", {
            "vocab_size": sweep.tokenizer.vocab_size, "toy_world": sweep.toy_world,
            "corpora": {name: sweep.corpora[name] for name in sorted(sweep.tokenizer.train_on)},
        }, label="tokenizer")

    benchmarks = [external(resolve_path(b, here), f"benchmark {b}") for b in probe_cfg.benchmarks]
    curate = {}
    for name, corpus in sweep.corpora.items():
        inputs = {"tokenizer": tokenizer, "problems": problems}
        inputs.update({f"benchmark:{i}": b for i, b in enumerate(benchmarks)})
        curate[name] = StageRun("curate", {"corpus": name, "source": corpus,
                                           "toy_world": sweep.toy_world},
                                inputs, label=f"curate {name}")

    if sweep.base.hf_path:
        base = external(resolve_path(sweep.base.hf_path, here), "base model")
    else:
        pretrain = sweep.base.pretrain
        base = StageRun("midtrain", {
            "phase": "pretrain", "model_preset": sweep.base.preset, "settings": sweep.midtrain,
            "tokens": pretrain.tokens, "lr": pretrain.lr, "mix": pretrain.mix, "threads": pretrain.threads,
        }, {"tokenizer": tokenizer, **_blend_inputs(pretrain, curate)}, label=f"pretrain base ({sweep.base.preset})")

    midtrain: dict[str, dict[int | None, list[StageRun]]] = {}
    for rname, recipe in sweep.recipes.items():
        midtrain[rname] = {}
        for replica, replica_settings in _replica_settings(sweep.midtrain, replica_seeds).items():
            stable = StageRun("midtrain", {
                "phase": "stable" if recipe.decay else "full", "settings": replica_settings,
                "tokens": recipe.stable.tokens, "lr": recipe.stable.lr, "mix": recipe.stable.mix,
                "threads": recipe.stable.threads,
            }, {"init": base, "tokenizer": tokenizer, **_blend_inputs(recipe.stable, curate)},
                label=f"midtrain {rname} stable{_replica_label(replica)}")
            stages = [stable]
            if recipe.decay:
                stages.append(StageRun("midtrain", {
                    "phase": "decay", "settings": replica_settings, "tokens": recipe.decay.tokens,
                    "threads": recipe.decay.threads,
                    "lr": recipe.decay.lr, "mix": recipe.decay.mix,
                }, {"init": stable, "tokenizer": tokenizer, **_blend_inputs(recipe.decay, curate)},
                    label=f"midtrain {rname} decay{_replica_label(replica)}"))
            midtrain[rname][replica] = stages

    plan = Plan(sweep.name, sweep.executor, problems, {}, sweep.curation_executor, base, midtrain)
    plan.role(problems, kind="problems")
    plan.role(tokenizer, kind="tokenizer")
    for name, run in curate.items():
        plan.role(run, kind="curate", corpus=name)
    plan.role(base, kind="base")
    for rname, replicas in midtrain.items():
        for replica, stages in replicas.items():
            for stage in stages:
                plan.role(stage, kind="midtrain", recipe=rname, phase=stage.config["phase"],
                          replica=replica)
    spec = probe_spec(sweep, source)
    if probe_cfg.difficulty == "auto":
        # probes read the selected problems; curation still decontaminates against the whole pool
        plan.problems = StageRun("select_problems", {
            "spec": spec.model_dump(mode="json"), "k": probe_cfg.difficulty_k,
            "target": list(probe_cfg.difficulty_target),
            "train_n": probe_cfg.train_set.n, "eval_n": probe_cfg.eval_set.n,
        }, {"pool": problems, "checkpoint": base}, label="difficulty control")
        plan.role(plan.problems, kind="difficulty")
    if probe_cfg.include_base:
        plan.add_probes(BASE_RECIPE, base, spec, probe_cfg.seeds, probe_cfg.verl,
                        keep_policy=probe_cfg.keep_policy)
    for recipe, replicas in midtrain.items():
        for replica, stages in replicas.items():
            plan.add_probes(recipe, stages[-1], spec, probe_cfg.seeds, probe_cfg.verl, replica,
                            probe_cfg.keep_policy)
    return plan


def problems_run(toy_world: dict, train_set: ProblemSet, eval_set: ProblemSet, here: Path) -> StageRun:
    """The probe's train/eval problems; user files enter the key by content fingerprint."""
    def source(problem_set: ProblemSet) -> dict:
        # without a field mapping, the key is what it was before mappings existed
        cfg = problem_set.model_dump(exclude={"fields"} if problem_set.fields is None else None)
        if problem_set.path:
            path = resolve_path(problem_set.path, here)
            cfg.update(path=str(path), fingerprint=fingerprint(path))
        return cfg

    return StageRun("problems", {"toy_world": toy_world, "train_set": source(train_set),
                                 "eval_set": source(eval_set)}, label="probe/eval problems")


def build_checkpoint_plan(name: str, checkpoints: dict[str, Path], spec, seeds: list[int],
                          train_set: ProblemSet, eval_set: ProblemSet, executor: ExecutorSection,
                          toy_world: dict | None = None, keep_policy: bool = False) -> Plan:
    """A checkpoint sweep job: probe HF checkpoints made anywhere, no sweep file needed."""
    plan = Plan(name, executor, problems_run(_resolved(toy_world or {}), train_set, eval_set, Path.cwd()), {})
    plan.role(plan.problems, kind="problems")
    for label, path in checkpoints.items():
        plan.add_probes(label, external(path, f"checkpoint {label}"), spec, seeds, keep_policy=keep_policy)
    return plan
