"""What each stage run does: the glue from a StageRun's config to a stage package.

Every function here gets the run, the resolved paths of its inputs, its
private working directory and a metrics callback. It translates the sweep's
resolved config into the stage package's typed config and calls it; the
stage packages do the work and know nothing of the run store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from pipelines.processes import torchrun
from pipelines.store import StageRun
from pipelines.sweep import split_nproc

Metrics = Callable[[int, dict], None]


def _problems(run: StageRun, inputs: dict[str, Path], out: Path, on_metrics: Metrics) -> None:
    from data_recipes.problems import ProblemFields, read_problem_set, write_problem_set
    from data_recipes.toyworld import ToyWorld, ToyWorldConfig, write_problems

    world = ToyWorld(ToyWorldConfig(**run.config["toy_world"]))
    for name in ("train", "eval"):
        cfg = run.config[f"{name}_set"]
        if cfg["path"]:  # GSM8K, MATH, mapped fields ... -> midprobe's problem format
            fields = ProblemFields(**cfg["fields"]) if cfg.get("fields") else None
            write_problem_set(read_problem_set(cfg["path"], fields), out / f"{name}.jsonl")
        else:  # an equal share of the problems at each requested difficulty
            levels = cfg["difficulty"] or [None]
            problems = []
            # offset: skip the first problems (a long-run target's own held-out eval set); a
            # smaller n is a prefix of a larger one, so the rest are disjoint from them
            for i, level in enumerate(levels):
                n, skip = (total // len(levels) + (i < total % len(levels))
                           for total in (cfg["n"], cfg.get("offset", 0)))
                problems += world.problems(cfg["toy_split"], skip + n, difficulty=level)[skip:]
            write_problems(problems, out / f"{name}.jsonl")


def _tokenizer(run: StageRun, inputs: dict[str, Path], out: Path, on_metrics: Metrics) -> None:
    from data_recipes.curate import CorpusConfig, iter_source_texts
    from data_recipes.tokenizer import train_tokenizer

    toy_world = run.config["toy_world"]

    def texts():
        for corpus in run.config["corpora"].values():
            yield from iter_source_texts(CorpusConfig(**corpus), toy_world=toy_world)

    train_tokenizer(texts(), run.config["vocab_size"], out)


def _curate(run: StageRun, inputs: dict[str, Path], out: Path, on_metrics: Metrics,
            executor: dict | None = None) -> None:
    from data_recipes.curate import CorpusConfig, ExecutorConfig, curate_corpus

    benchmarks = [inputs["problems"] / "train.jsonl", inputs["problems"] / "eval.jsonl"]
    benchmarks += [path for role, path in sorted(inputs.items()) if role.startswith("benchmark:")]
    curate_corpus(CorpusConfig(**run.config["source"]), name=run.config["corpus"],
                  toy_world=run.config["toy_world"], tokenizer_dir=inputs["tokenizer"],
                  decontaminate_against=benchmarks, out_dir=out,
                  executor=ExecutorConfig(**(executor or {})))


def _midtrain(run: StageRun, inputs: dict[str, Path], out: Path, on_metrics: Metrics,
              threads: int = 1) -> None:
    from midtrain.spec import MODEL_PRESETS, ModelSpec
    from midtrain.train import BlendPart, TrainConfig, TrainJob, train

    cfg = run.config
    settings, nproc = split_nproc(cfg["settings"])
    if cfg["lr"] is not None:
        settings["lr"] = cfg["lr"]
    # the processes share the stage's thread budget
    settings.update(tokens=cfg["tokens"], threads=max(1, (cfg["threads"] or threads) // nproc),
                    schedule=_phase_schedule(cfg["phase"], settings.get("schedule")))
    train_cfg = TrainConfig(**settings)
    blend = []
    for name, weight in sorted(cfg["mix"].items()):
        corpus_dir = inputs[f"corpus:{name}"]
        curation = json.loads((corpus_dir / "curation.json").read_text())
        blend.append(BlendPart(name=name, weight=weight,
                               prefixes=[str(corpus_dir / p) for p in curation["prefixes"]]))
    init = inputs.get("init")
    if init is not None and cfg["phase"] != "decay":
        # a new phase from a base model takes its weights only (like mid-training a released
        # base); a decay branch continues its stable stage, optimizer state included
        init = checkpoint_dir(init)
    if init is None:
        model = MODEL_PRESETS[cfg["model_preset"]].model_copy(
            update={"vocab_size": _vocab_size(inputs["tokenizer"])})
    else:
        model = ModelSpec.from_hf_config(checkpoint_dir(init))
    if nproc == 1:
        train(model, train_cfg, blend, out_dir=out, init=init, tokenizer_dir=inputs["tokenizer"],
              on_metrics=on_metrics)
    else:
        torchrun(TrainJob(model=model, config=train_cfg, blend=blend, out_dir=out, init=init,
                           tokenizer_dir=inputs["tokenizer"]), nproc, on_metrics)


def _phase_schedule(phase: str, configured: str | None) -> str:
    """Stable stages hold the LR constant so decay branches can fork from them."""
    return {"stable": "constant", "decay": "linear-decay"}.get(phase, configured or "wsd")


def _vocab_size(tokenizer_dir: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer_dir))


def checkpoint_dir(path: Path) -> Path:
    """The HF directory of a checkpoint input: a midtrain run's export, or an HF dir itself."""
    return path / "hf" if (path / "hf" / "config.json").is_file() else path


def _probe(run: StageRun, inputs: dict[str, Path], out: Path, on_metrics: Metrics) -> None:
    from rl_probe.embedded import run_probe
    from rl_probe.spec import ProbeSpec
    from rl_probe.verl_backend import run_probe_verl

    spec = ProbeSpec.model_validate(run.config["spec"])
    if spec.content_hash() != run.config["spec_hash"]:  # the spec class itself changed meaning
        raise RuntimeError(f"probe spec '{spec.name}' no longer hashes to {run.config['spec_hash']}")
    # both engines write the same artifacts with verl's metric names (DESIGN: one vocabulary)
    if spec.engine == "verl":
        engine, options = run_probe_verl, run.config.get("engine_options", {})
    else:
        engine, options = run_probe, {"keep_policy": run.config.get("keep_policy", False)}
    engine(checkpoint_dir(inputs["checkpoint"]), spec, inputs["problems"] / "train.jsonl",
           inputs["problems"] / "eval.jsonl", seed=run.config["seed"], out_dir=out,
           on_metrics=on_metrics, **options)


def _select_problems(run: StageRun, inputs: dict[str, Path], out: Path, on_metrics: Metrics) -> None:
    from rl_probe.difficulty import choose_levels, pass_at_k_by_difficulty
    from rl_probe.prompts import load_problems
    from rl_probe.spec import ProbeSpec

    cfg = run.config
    spec = ProbeSpec.model_validate(cfg["spec"])
    train = load_problems(inputs["pool"] / "train.jsonl")
    if any(p.get("difficulty") is None for p in train):  # `validate` refuses such sweeps
        raise ValueError("probe.difficulty: auto needs a difficulty level on every probe problem")
    measured = pass_at_k_by_difficulty(checkpoint_dir(inputs["checkpoint"]), train, spec, k=cfg["k"])
    low, high = cfg["target"]
    levels = choose_levels(measured, low, high)
    on_metrics(0, {f"difficulty/pass@{cfg['k']}/level_{level}": value for level, value in measured.items()})
    for name, n in (("train", cfg["train_n"]), ("eval", cfg["eval_n"])):
        pool = load_problems(inputs["pool"] / f"{name}.jsonl")
        chosen = [[p for p in pool if p["difficulty"] == level] for level in levels]
        picked = [p for i, group in enumerate(chosen) for p in group[:n // len(levels) + (i < n % len(levels))]]
        (out / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in picked))
    (out / "difficulty.json").write_text(json.dumps({
        "k": cfg["k"], "target": cfg["target"], "pass_at_k_by_level": measured, "chosen_levels": levels},
        indent=2))


STAGES: dict[str, Callable] = {
    "select_problems": _select_problems,
    "problems": _problems,
    "tokenizer": _tokenizer,
    "curate": _curate,
    "midtrain": _midtrain,
    "probe": _probe,
}
# Stages that need the run's thread budget as a setting (the worker already sets torch's);
# curation takes the executor config instead.
THREADED = {"midtrain"}
