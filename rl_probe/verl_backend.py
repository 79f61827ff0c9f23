"""The verl probe engine: the same probe spec run by verl's trainer on GPU clusters.

What runs here on any machine: the parquet data in verl's format, the Hydra
config composed from verl's own config directory and checked by verl's
`validate_config`, the launch command, and the read-back of verl's
file-logger and rollout dumps into the artifacts the embedded engine
writes (metrics.jsonl, rollouts/step_<N>.jsonl, summary.json). Only
`run_probe_verl` needs GPUs (verl's rollout is vLLM / SGLang).

The step-0 pass@k profile is verl's too: a validation-only launch before
training (`trainer.val_only`) samples spec.passk_samples responses per
problem for the embedded engine's profile problems, at the rollout's
temperature and the spec's response length, and writes verl's validation
dump (verl_profile/0.jsonl), from which profile.json's pass@k is computed as
the embedded engine computes it. (Few-shot accuracy is the embedded engine's
only.)

verl's file logger truncates its file when it opens it, so every launch
attempt logs to its own file under verl_logs/; read-back merges them, a
later attempt's line for a step replacing an earlier one (verl resumes
from its own checkpoints under state/ with resume_mode=auto).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import verl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config

from rl_probe.embedded import MetricsCallback, behaviour_metrics, pass_at_k_profile, profile_problems, write_completions
from rl_probe.prompts import Prompter, problems_within_length
from rl_probe.reward import RewardResult, score, score_held_out
from rl_probe.spec import ProbeSpec
from rl_probe.summary import ProbeSummary
from rl_probe.verl_config import PROFILE_DIR, VerlCluster, VerlLaunchSettings, hydra_overrides
from runfiles import METRICS_FILE, atomic_write, read_jsonl, read_metrics

VERL_CONFIG_DIR = Path(verl.__file__).parent / "trainer" / "config"


# ---------------------------------------------------------------- data


def verl_rows(problems: list[dict], prompter: Prompter, split: str) -> list[dict]:
    """verl's RL dataset rows: the fully rendered prompt as the only user message."""
    return [
        {
            "data_source": p["data_source"],
            "prompt": [{"role": "user", "content": prompter.render(p)}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(p["answer"])},
            "extra_info": {"index": i, "split": split, "id": p["id"], "difficulty": p.get("difficulty")},
        }
        for i, p in enumerate(problems)
    ]


def write_parquet(problems: list[dict], prompter: Prompter, path: Path, split: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(verl_rows(problems, prompter, split)).to_parquet(path, index=False)
    return path


# ---------------------------------------------------------------- config


def compose_config(overrides: list[str]) -> DictConfig:
    """verl's ppo_trainer config with the overrides applied, validated by verl's own checks."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(VERL_CONFIG_DIR), version_base=None):
        config = compose(config_name="ppo_trainer", overrides=overrides)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    return config


# ---------------------------------------------------------------- launch


@dataclass
class VerlLaunch:
    command: list[str]
    env: dict[str, str]  # additions to the environment
    config: DictConfig
    log_path: Path
    profile: VerlLaunch | None = None  # the step-0 pass@k profile, launched first


def _launch(overrides: list[str], log_path: Path, config_path: Path) -> VerlLaunch:
    config = compose_config(overrides)
    OmegaConf.save(config, config_path)
    return VerlLaunch(
        command=[sys.executable, "-m", "verl.trainer.main_ppo", *overrides],
        env={"VERL_FILE_LOGGER_PATH": str(log_path), "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")},
        config=config,
        log_path=log_path,
    )


def prepare_verl_probe(checkpoint: Path, spec: ProbeSpec, train_set: Path, eval_set: Path, seed: int,
                       out_dir: Path, **cluster) -> VerlLaunch:
    """Write the parquet data and the composed config under out_dir; return the command that runs it.

    `cluster`: `VerlCluster`'s options (n_gpus_per_node, nnodes, rollout_engine, ...).
    """
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    generation = Path(checkpoint) / "generation_config.json"
    generation_eos = json.loads(generation.read_text()).get("eos_token_id") if generation.is_file() else None
    prompter = Prompter(tokenizer, spec, generation_eos)
    train, evals, prompt_counts = problems_within_length(prompter, train_set, eval_set)
    train_file = write_parquet(train, prompter, out_dir / "data" / "train.parquet", "train")
    val_file = write_parquet(evals, prompter, out_dir / "data" / "val.parquet", "val")
    profile_file = write_parquet(profile_problems(train, spec, seed), prompter,
                                 out_dir / "data" / "profile.parquet", "profile")
    (out_dir / "data" / "prompts.json").write_text(json.dumps(prompt_counts, indent=2) + "\n")
    logs = out_dir / "verl_logs"
    logs.mkdir(parents=True, exist_ok=True)
    attempt = len(list(logs.glob("attempt_*.jsonl")))
    train_launch = VerlLaunchSettings(model_path=checkpoint, train_file=train_file, val_file=val_file,
                                      out_dir=out_dir, seed=seed, attempt=attempt, cluster=VerlCluster(**cluster))
    launch = _launch(hydra_overrides(spec, train_launch), logs / f"attempt_{attempt:03d}.jsonl",
                     out_dir / "verl_config.yaml")
    launch.profile = _launch(hydra_overrides(spec, replace(train_launch, val_file=profile_file), profile=True),
                             logs / "profile.jsonl", out_dir / "verl_profile_config.yaml")
    return launch


def run_probe_verl(checkpoint: Path, spec: ProbeSpec, train_set: Path, eval_set: Path, seed: int, out_dir: Path,
                   on_metrics: MetricsCallback | None = None, **cluster) -> dict:
    """Run the probe with verl's trainer (GPU machines), then write the embedded engine's artifacts.

    verl's checkpoints under state/ (actor and optimizer shards) serve its resume only; a finished
    probe drops them, as the embedded engine does.
    """
    launch = prepare_verl_probe(checkpoint, spec, train_set, eval_set, seed, out_dir, **cluster)
    if not (Path(out_dir) / PROFILE_DIR / "0.jsonl").is_file():  # a resumed probe has it
        subprocess.run(launch.profile.command, env={**os.environ, **launch.profile.env}, check=True)
    subprocess.run(launch.command, env={**os.environ, **launch.env}, check=True)
    summary = import_verl_run(out_dir, spec, seed, checkpoint, on_metrics)
    shutil.rmtree(Path(out_dir) / "state", ignore_errors=True)
    return summary


# ---------------------------------------------------------------- read-back


def read_verl_logs(out_dir: Path) -> list[dict]:
    """All launch attempts' file-logger lines, one per step; a later attempt's step replaces an earlier one's."""
    by_step: dict[int, dict] = {}
    for log in sorted((Path(out_dir) / "verl_logs").glob("attempt_*.jsonl")):
        for row in read_metrics(log):
            by_step[row["step"]] = row["data"]
    return [{"step": step, "data": by_step[step]} for step in sorted(by_step)]


def dump_behaviour(dump_file: Path, tokenizer, spec: ProbeSpec) -> dict:
    """behaviour/* and probe/* metrics from one verl rollout dump (rows of a group are consecutive)."""
    rows = read_jsonl(dump_file)
    texts = [r["output"] for r in rows]
    results = [score(r["output"], str(r["gts"]), spec.reward_variant) for r in rows]
    lengths = np.array([len(tokenizer.encode(t, add_special_tokens=False)) for t in texts])
    return behaviour_metrics(texts, results, torch.as_tensor(lengths), spec.group_size)


def import_verl_run(out_dir: Path, spec: ProbeSpec, seed: int, checkpoint: Path,
                    on_metrics: MetricsCallback | None = None) -> dict:
    """verl's logs and dumps -> metrics.jsonl, rollouts/step_<N>.jsonl and summary.json."""
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    rows = read_verl_logs(out_dir)
    for row in rows:
        dump = out_dir / "verl_rollouts" / f"{row['step']}.jsonl"
        if dump.exists():
            row["data"].update(dump_behaviour(dump, tokenizer, spec))
        validation = out_dir / "verl_validation" / f"{row['step']}.jsonl"
        if validation.exists():
            _write_rollouts(validation, out_dir / "rollouts" / f"step_{row['step']}.jsonl", row["step"], spec)
    atomic_write(out_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in rows))
    if on_metrics is not None:
        for row in rows:
            on_metrics(row["step"], row["data"])
    profile_dump = out_dir / PROFILE_DIR / "0.jsonl"
    profile = validation_pass_at_k(profile_dump, spec) if profile_dump.is_file() else None
    if profile is not None:
        atomic_write(out_dir / "profile.json", json.dumps(profile, indent=2) + "\n")
    if any((out_dir / "rollouts").glob("step_*.jsonl")):
        write_completions(out_dir)
    return ProbeSummary.from_metrics(rows, profile, spec=spec, engine="verl", seed=seed, checkpoint=checkpoint,
                                     prompts=_read_json(out_dir / "data" / "prompts.json")
                                     ).write(out_dir / "summary.json")


def validation_pass_at_k(validation_dump: Path, spec: ProbeSpec) -> dict:
    """The step-0 profile (profile.json) from the profile launch's validation dump: per problem
    (the reward module's `id`) the responses the reward module judged correct (`acc`)."""
    correct: dict[str, list[float]] = {}
    for row in read_jsonl(validation_dump):
        if not row.get("id") or "acc" not in row:
            raise ValueError(f"{validation_dump}: a validation response carries no problem id or acc "
                             "(verl ran without midprobe's reward module, rl_probe/verl_reward.py)")
        correct.setdefault(row["id"], []).append(float(row["acc"]))
    n = spec.passk_samples
    if {len(v) for v in correct.values()} != {n}:
        raise ValueError(f"{validation_dump}: expected {n} responses per problem (spec {spec.name!r}'s "
                         f"passk_samples), got {sorted({len(v) for v in correct.values()})}")
    return pass_at_k_profile([int(sum(v)) for v in correct.values()], n, spec)


def _write_rollouts(validation_dump: Path, path: Path, step: int, spec: ProbeSpec) -> None:
    """A validation dump as the probe's eval rollouts: per response its problem id (from the
    reward module's extra info), so ranking reads per-problem correctness as for the embedded
    engine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in read_jsonl(validation_dump):
        if not row.get("id"):
            raise ValueError(f"{validation_dump}: a validation response carries no problem id "
                             "(verl ran without midprobe's reward module, rl_probe/verl_reward.py)")
        result: RewardResult = score_held_out(row["output"], str(row["gts"]), spec.reward_variant)
        rows.append({"step": step, "id": row["id"], "data_source": row.get("data_source"),
                     "prompt": row["input"], "response": row["output"], "reward": row["score"],
                     "acc": result.acc, "pred": result.pred})
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
