"""What each stage run does: the glue from a StageRun's config to a stage package.

Every function here has one signature, `(run, inputs, out, ctx)`: the run, the resolved paths
of its inputs, its private working directory and a `StageContext` (the run's thread budget, the
curation executor, the metrics callback). It translates the sweep's resolved config into the
stage package's typed config and calls it; the stage packages do the work and know nothing of
the run store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data_recipes.problems import read_problem_set, write_problem_set
from data_recipes.tokenizer import train_tokenizer
from data_recipes.toyworld import ToyWorld, write_problems
from midtrain.config import hf_dir
from midtrain.spec import ModelSpec
from pipelines.processes import torchrun
from pipelines.store import StageRun
from rl_probe.difficulty import choose_levels, pass_at_k_by_difficulty
from rl_probe.prompts import load_problems

Metrics = Callable[[int, dict], None]


@dataclass(frozen=True)
class StageContext:
    """What the executor gives every stage run besides its config: runtime choices that never
    change results, so they stay out of keys (a midtrain stage's own `threads` setting does not)."""
    on_metrics: Metrics
    threads: int = 1
    curation_executor: dict | None = None


def _problems(run: StageRun, inputs: dict[str, Path], out: Path, ctx: StageContext) -> None:
    """The problem pool: a user file whole (GSM8K, MATH, mapped fields ... in midprobe's format),
    or a toy set's n problems at every level."""
    world = ToyWorld(run.config.toy_world)
    for name, source in (("train", run.config.train_set), ("eval", run.config.eval_set)):
        if source.path:
            write_problem_set(read_problem_set(source.path, source.fields), out / f"{name}.jsonl")
        else:  # n at every level, after the first `offset` of each (a long-run target's own
            # held-out eval set: a smaller n is a prefix of a larger one, so they are disjoint)
            skip = source.offset or 0
            write_problems([p for level in world.cfg.difficulties
                            for p in world.problems(source.toy_split, skip + source.n, difficulty=level)[skip:]],
                           out / f"{name}.jsonl")


def _tokenizer(run: StageRun, inputs: dict[str, Path], out: Path, ctx: StageContext) -> None:
    from data_recipes.curate import CorpusConfig, iter_source_texts

    toy_world = run.config.toy_world.model_dump()

    def texts():
        for source in run.config.sources.values():
            yield from iter_source_texts(CorpusConfig(source=source), toy_world=toy_world)

    train_tokenizer(texts(), run.config.vocab_size, out)


def _curate(run: StageRun, inputs: dict[str, Path], out: Path, ctx: StageContext) -> None:
    from data_recipes.curate import ExecutorConfig, curate_corpus

    benchmarks = [inputs["problems"] / "train.jsonl", inputs["problems"] / "eval.jsonl"]
    benchmarks += [path for role, path in sorted(inputs.items()) if role.startswith("benchmark:")]
    curate_corpus(run.config.corpus_config, name=run.config.corpus,
                  toy_world=run.config.toy_world.model_dump(), tokenizer_dir=inputs["tokenizer"],
                  decontaminate_against=benchmarks, out_dir=out,
                  executor=ExecutorConfig(**(ctx.curation_executor or {})))


def _midtrain(run: StageRun, inputs: dict[str, Path], out: Path, ctx: StageContext) -> None:
    from midtrain.train import BlendPart, TrainJob, train

    cfg = run.config
    nproc = cfg.nproc_per_node
    # the processes share the stage's thread budget
    train_cfg = cfg.train.model_copy(update={"threads": max(1, (cfg.threads or ctx.threads) // nproc)})
    # decay branches continue a stable stage's final state; any other stage leaves its HF export
    keep_final_state = cfg.phase == "stable"
    blend = []
    for name, weight in sorted(cfg.mix.items()):
        corpus_dir = inputs[f"corpus:{name}"]
        curation = json.loads((corpus_dir / "curation.json").read_text())
        blend.append(BlendPart(name=name, weight=weight,
                               prefixes=[str(corpus_dir / p) for p in curation["prefixes"]]))
    init = inputs.get("init")
    if init is not None and cfg.phase != "decay":
        # a new phase from a base model takes its weights only (like mid-training a released
        # base); a decay branch continues its stable stage, optimizer state included
        init = hf_dir(init)
    if init is None:
        model = cfg.model.model_copy(update={"vocab_size": _vocab_size(inputs["tokenizer"])})
    else:
        model = ModelSpec.from_hf_config(hf_dir(init))
    if nproc == 1:
        train(model, train_cfg, blend, out_dir=out, init=init, tokenizer_dir=inputs["tokenizer"],
              on_metrics=ctx.on_metrics, keep_final_state=keep_final_state)
    else:
        torchrun(TrainJob(model=model, config=train_cfg, blend=blend, out_dir=out, init=init,
                          tokenizer_dir=inputs["tokenizer"], keep_final_state=keep_final_state),
                 nproc, ctx.on_metrics)


def _vocab_size(tokenizer_dir: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer_dir))




def _probe(run: StageRun, inputs: dict[str, Path], out: Path, ctx: StageContext) -> None:
    from rl_probe.embedded import run_probe
    from rl_probe.verl_backend import run_probe_verl

    spec = run.config.spec
    if spec.content_hash() != run.config.spec_hash:  # the spec class itself changed meaning
        raise RuntimeError(f"probe spec '{spec.name}' no longer hashes to {run.config.spec_hash}")
    # both engines write the same artifacts with verl's metric names (DESIGN: one vocabulary)
    if spec.engine == "verl":
        engine, options = run_probe_verl, run.config.engine_options or {}
    else:
        engine, options = run_probe, {"keep_policy": run.config.keep_policy, "device": run.config.device}
    engine(hf_dir(inputs["checkpoint"]), spec, inputs["problems"] / "train.jsonl",
           inputs["problems"] / "eval.jsonl", seed=run.config.seed, out_dir=out,
           on_metrics=ctx.on_metrics, **options)


def _pick(pool: list[dict], levels: list[int] | None, n: int | None) -> list[dict]:
    """Problems of `pool` at `levels` (None: every level in it): n in equal shares of the levels
    (the first ones of each, as the pool's order is the generator's), or all when n is None."""
    if n is None:
        return [p for p in pool if levels is None or p.get("difficulty") in levels]
    levels = levels or sorted({p["difficulty"] for p in pool})
    groups = [[p for p in pool if p["difficulty"] == level] for level in levels]
    return [p for i, group in enumerate(groups) for p in group[:n // len(levels) + (i < n % len(levels))]]


def _select_problems(run: StageRun, inputs: dict[str, Path], out: Path, ctx: StageContext) -> None:
    cfg = run.config
    pool = {name: load_problems(inputs["pool"] / f"{name}.jsonl") for name in ("train", "eval")}
    picks = {"train": cfg.train_set, "eval": cfg.eval_set}
    levels = {name: picks[name].levels for name in pool}
    if cfg.difficulty == "auto":
        if any(p.get("difficulty") is None for p in pool["train"]):  # `validate` refuses such sweeps
            raise ValueError("probe.difficulty: auto needs a difficulty level on every probe problem")
        measured = pass_at_k_by_difficulty(  # at the sets' levels if they name any
            hf_dir(inputs["checkpoint"]), _pick(pool["train"], levels["train"], None), cfg.spec, k=cfg.k)
        chosen = choose_levels(measured, *cfg.target)
        levels = {name: chosen for name in pool}
        ctx.on_metrics(0, {f"difficulty/pass@{cfg.k}/level_{level}": value for level, value in measured.items()})
        (out / "difficulty.json").write_text(json.dumps({
            "k": cfg.k, "target": cfg.target, "pass_at_k_by_level": measured, "chosen_levels": chosen},
            indent=2))
    for name, problems in pool.items():
        picked = _pick(problems, levels[name], picks[name].n)
        (out / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in picked))


STAGES: dict[str, Callable] = {
    "select_problems": _select_problems,
    "problems": _problems,
    "tokenizer": _tokenizer,
    "curate": _curate,
    "midtrain": _midtrain,
    "probe": _probe,
}
