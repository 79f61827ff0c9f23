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

from midtrain.config import hf_dir
from pipelines.processes import torchrun
from pipelines.store import StageRun

Metrics = Callable[[int, dict], None]


def _problems(run: StageRun, inputs: dict[str, Path], out: Path, on_metrics: Metrics) -> None:
    """The problem pool: a user file whole (GSM8K, MATH, mapped fields ... in midprobe's format),
    or a toy set's n problems at every level."""
    from data_recipes.problems import ProblemFields, read_problem_set, write_problem_set
    from data_recipes.toyworld import ToyWorld, ToyWorldConfig, write_problems

    world = ToyWorld(ToyWorldConfig(**run.config["toy_world"]))
    for name in ("train", "eval"):
        cfg = run.config[f"{name}_set"]
        if "path" in cfg:
            fields = ProblemFields(**cfg["fields"]) if cfg.get("fields") else None
            write_problem_set(read_problem_set(cfg["path"], fields), out / f"{name}.jsonl")
        else:  # n at every level, after the first `offset` of each (a long-run target's own
            # held-out eval set: a smaller n is a prefix of a larger one, so they are disjoint)
            skip = cfg.get("offset", 0)
            write_problems([p for level in world.cfg.difficulties
                            for p in world.problems(cfg["toy_split"], skip + cfg["n"], difficulty=level)[skip:]],
                           out / f"{name}.jsonl")


def _tokenizer(run: StageRun, inputs: dict[str, Path], out: Path, on_metrics: Metrics) -> None:
    from data_recipes.curate import CorpusConfig, iter_source_texts
    from data_recipes.tokenizer import train_tokenizer

    toy_world = run.config["toy_world"]

    def texts():
        for source in run.config["sources"].values():
            yield from iter_source_texts(CorpusConfig(source=source), toy_world=toy_world)

    train_tokenizer(texts(), run.config["vocab_size"], out)


def _curate(run: StageRun, inputs: dict[str, Path], out: Path, on_metrics: Metrics,
            executor: dict | None = None) -> None:
    from data_recipes.curate import CorpusConfig, ExecutorConfig, curate_corpus

    benchmarks = [inputs["problems"] / "train.jsonl", inputs["problems"] / "eval.jsonl"]
    benchmarks += [path for role, path in sorted(inputs.items()) if role.startswith("benchmark:")]
    curate_corpus(CorpusConfig(**run.config["corpus_config"]), name=run.config["corpus"],
                  toy_world=run.config["toy_world"], tokenizer_dir=inputs["tokenizer"],
                  decontaminate_against=benchmarks, out_dir=out,
                  executor=ExecutorConfig(**(executor or {})))


def _midtrain(run: StageRun, inputs: dict[str, Path], out: Path, on_metrics: Metrics,
              threads: int = 1) -> None:
    from midtrain.spec import ModelSpec
    from midtrain.config import TrainConfig
    from midtrain.train import BlendPart, TrainJob, train

    cfg = run.config
    nproc = cfg["nproc_per_node"]
    # the processes share the stage's thread budget
    train_cfg = TrainConfig(**cfg["train"], threads=max(1, (cfg["threads"] or threads) // nproc))
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
        init = hf_dir(init)
    if init is None:
        model = ModelSpec.model_validate(cfg["model"]).model_copy(
            update={"vocab_size": _vocab_size(inputs["tokenizer"])})
    else:
        model = ModelSpec.from_hf_config(hf_dir(init))
    if nproc == 1:
        train(model, train_cfg, blend, out_dir=out, init=init, tokenizer_dir=inputs["tokenizer"],
              on_metrics=on_metrics)
    else:
        torchrun(TrainJob(model=model, config=train_cfg, blend=blend, out_dir=out, init=init,
                           tokenizer_dir=inputs["tokenizer"]), nproc, on_metrics)


def _vocab_size(tokenizer_dir: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer_dir))




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
        engine, options = run_probe, {"keep_policy": run.config.get("keep_policy", False),
                                      "device": run.config.get("device", "cpu")}
    engine(hf_dir(inputs["checkpoint"]), spec, inputs["problems"] / "train.jsonl",
           inputs["problems"] / "eval.jsonl", seed=run.config["seed"], out_dir=out,
           on_metrics=on_metrics, **options)


def _pick(pool: list[dict], levels: list[int] | None, n: int | None) -> list[dict]:
    """Problems of `pool` at `levels` (None: every level in it): n in equal shares of the levels
    (the first ones of each, as the pool's order is the generator's), or all when n is None."""
    if n is None:
        return [p for p in pool if levels is None or p.get("difficulty") in levels]
    levels = levels or sorted({p["difficulty"] for p in pool})
    groups = [[p for p in pool if p["difficulty"] == level] for level in levels]
    return [p for i, group in enumerate(groups) for p in group[:n // len(levels) + (i < n % len(levels))]]


def _select_problems(run: StageRun, inputs: dict[str, Path], out: Path, on_metrics: Metrics) -> None:
    cfg = run.config
    from rl_probe.prompts import load_problems

    cfg = run.config
    pool = {name: load_problems(inputs["pool"] / f"{name}.jsonl") for name in ("train", "eval")}
    levels = {name: cfg[f"{name}_set"]["levels"] for name in pool}
    if cfg["difficulty"] == "auto":
        from rl_probe.difficulty import choose_levels, pass_at_k_by_difficulty
        from rl_probe.spec import ProbeSpec

        if any(p.get("difficulty") is None for p in pool["train"]):  # `validate` refuses such sweeps
            raise ValueError("probe.difficulty: auto needs a difficulty level on every probe problem")
        measured = pass_at_k_by_difficulty(  # at the sets' levels if they name any
            hf_dir(inputs["checkpoint"]), _pick(pool["train"], levels["train"], None),
            ProbeSpec.model_validate(cfg["spec"]), k=cfg["k"])
        chosen = choose_levels(measured, *cfg["target"])
        levels = {name: chosen for name in pool}
        on_metrics(0, {f"difficulty/pass@{cfg['k']}/level_{level}": value for level, value in measured.items()})
        (out / "difficulty.json").write_text(json.dumps({
            "k": cfg["k"], "target": cfg["target"], "pass_at_k_by_level": measured, "chosen_levels": chosen},
            indent=2))
    for name, problems in pool.items():
        picked = _pick(problems, levels[name], cfg[f"{name}_set"]["n"])
        (out / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in picked))


# Bump a stage's own version when its function here changes what it writes for the same config.
PROBLEMS_CODE_VERSION = 1


def code_versions() -> dict[str, int]:
    """Each stage's code version, part of its runs' keys: a behaviour change must bump it so that
    no finished run made by the old code is reused."""
    from data_recipes.curate import CURATION_CODE_VERSION
    from data_recipes.tokenizer import TOKENIZER_CODE_VERSION
    from midtrain.config import MIDTRAIN_CODE_VERSION
    from rl_probe.difficulty import DIFFICULTY_CODE_VERSION
    from rl_probe.spec import PROBE_CODE_VERSION

    return {"problems": PROBLEMS_CODE_VERSION, "select_problems": DIFFICULTY_CODE_VERSION,
            "tokenizer": TOKENIZER_CODE_VERSION, "curate": CURATION_CODE_VERSION,
            "midtrain": MIDTRAIN_CODE_VERSION, "probe": PROBE_CODE_VERSION}


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
