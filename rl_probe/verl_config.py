"""The keys of verl's ppo_trainer config that make verl's trainer run a probe spec.

A mapping from the key's place in verl's config tree (`algorithm`, `data`,
`actor_rollout_ref.actor`, `actor_rollout_ref.rollout`, `reward`, `trainer`) to its value,
built from three parts: the spec (its fields by their verl key, `SPEC_KEYS`, and what verl
derives from them), the launch (paths, seed, attempt) and the cluster (`VerlCluster`, the
sweep's `probe.verl`). Torch-free: the sweep validates cluster options with it, and
`rl_probe.verl_backend` composes and validates the config with verl's own code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rl_probe.spec import ProbeSpec

ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"
# verl loads the reward function by path; a file beside this one (not imported: its scoring
# libraries are not needed to name it)
REWARD_MODULE = Path(__file__).with_name("verl_reward.py")
# verl renders prompts with a chat template. The parquet's single user message is the prompt as
# rl_probe.prompts rendered it (BOS and any chat markup included), so verl's template passes it
# through untouched and both engines tokenize the same text.
PASS_THROUGH_TEMPLATE = '{% for message in messages %}{{ message["content"] }}{% endfor %}'
PROFILE_DIR = "verl_profile"  # the profile launch's validation dump: <step 0>.jsonl

# ProbeSpec fields that verl takes as they are, by their key in verl's config tree. The spec's
# other fields are derived into verl's keys (`_derived`), applied before verl runs (the template
# and the prompt-length drops when the parquet is written, the profile's problems and samples in
# the profile launch), or belong to the embedded engine (refused for verl by ProbeSpec).
SPEC_KEYS: dict[str, str] = {
    "adv_estimator": "algorithm.adv_estimator",
    "norm_adv_by_std": "algorithm.norm_adv_by_std_in_grpo",
    "bypass_mode": "algorithm.rollout_correction.bypass_mode",
    "prompts_per_step": "data.train_batch_size",
    "max_prompt_length": "data.max_prompt_length",
    "max_response_length": "data.max_response_length",
    "lr": f"{ACTOR}.optim.lr",
    "weight_decay": f"{ACTOR}.optim.weight_decay",
    "grad_clip": f"{ACTOR}.grad_clip",
    "mini_batch_prompts": f"{ACTOR}.ppo_mini_batch_size",
    "ppo_epochs": f"{ACTOR}.ppo_epochs",
    "kl_coef": f"{ACTOR}.kl_loss_coef",
    "kl_type": f"{ACTOR}.kl_loss_type",
    "entropy_coeff": f"{ACTOR}.entropy_coeff",
    "loss_agg_mode": f"{ACTOR}.loss_agg_mode",
    "policy_loss": f"{ACTOR}.policy_loss.loss_mode",
    "clip_ratio_low": f"{ACTOR}.clip_ratio_low",
    "clip_ratio_high": f"{ACTOR}.clip_ratio_high",
    "clip_ratio_c": f"{ACTOR}.clip_ratio_c",
    "group_size": f"{ROLLOUT}.n",
    "temperature": f"{ROLLOUT}.temperature",
    "top_p": f"{ROLLOUT}.top_p",
    "eval_samples": f"{ROLLOUT}.val_kwargs.n",
    "eval_temperature": f"{ROLLOUT}.val_kwargs.temperature",
    "reward_variant": "+reward.custom_reward_function.reward_kwargs.variant",
    "steps": "trainer.total_training_steps",
    "eval_every": "trainer.test_freq",
    "checkpoint_every": "trainer.save_freq",
}

# What every probe launch sets, whatever the spec.
FIXED: dict[str, Any] = {
    "algorithm.use_kl_in_reward": False,
    "critic.enable": False,
    # Overlong prompts were dropped when the parquet was written, with the same tokenization;
    # verl's own filter would run before the custom chat template is set on its tokenizer and
    # drop every row.
    "data.filter_overlong_prompts": False,
    "data.truncation": "error",
    "actor_rollout_ref.model.custom_chat_template": PASS_THROUGH_TEMPLATE,
    f"{ACTOR}.strategy": "fsdp",
    "reward.custom_reward_function.path": str(REWARD_MODULE),
    "reward.custom_reward_function.name": "compute_score",
    "trainer.val_before_train": True,
    "trainer.resume_mode": "auto",
    "trainer.logger": ["console", "file"],
    "trainer.project_name": "midprobe",
}


class VerlCluster(BaseModel):
    """How verl lays a probe out on a cluster (the sweep's `probe.verl`): results do not depend on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_gpus_per_node: int = Field(default=8, ge=1)
    nnodes: int = Field(default=1, ge=1)
    rollout_engine: Literal["vllm", "sglang", "trtllm"] = "vllm"
    rollout_tp: int = Field(default=1, ge=1)  # the rollout engine's tensor parallelism
    micro_batch_per_gpu: int = Field(default=4, ge=1)  # of the update and of every log-prob pass


@dataclass(frozen=True)
class VerlLaunchSettings:
    """One launch's own settings: the checkpoint, the data, where it writes, its seed and attempt."""

    model_path: Path
    train_file: Path
    val_file: Path
    out_dir: Path
    seed: int
    attempt: int = 0
    cluster: VerlCluster = field(default_factory=VerlCluster)


def verl_config_values(spec: ProbeSpec, launch: VerlLaunchSettings, profile: bool = False) -> dict[str, Any]:
    """verl config key -> value for running `spec`; with `profile`, its step-0 pass@k profile
    instead (validation only, `launch.val_file` holding the profile problems, spec.passk_samples
    responses each at the rollout's sampling settings)."""
    if spec.engine != "verl":
        raise ValueError(f"probe spec {spec.name!r} is for the {spec.engine!r} engine, not 'verl'")
    if spec.length_schedule:
        raise ValueError("verl 0.9.1 has no response-length schedule; use a spec without length_schedule")
    values = {**FIXED, **{key: getattr(spec, name) for name, key in SPEC_KEYS.items()}, **_derived(spec),
              **_launch_values(spec, launch), **_cluster_values(launch.cluster)}
    return {**values, **_profile_values(spec, launch)} if profile else values


def hydra_overrides(spec: ProbeSpec, launch: VerlLaunchSettings, profile: bool = False) -> list[str]:
    """`verl_config_values` as command-line overrides of verl's ppo_trainer config."""
    return [f"{key}={_hydra_value(value)}" for key, value in verl_config_values(spec, launch, profile).items()]


def _derived(spec: ProbeSpec) -> dict[str, Any]:
    return {
        f"{ACTOR}.use_kl_loss": spec.kl_coef > 0,
        f"{ACTOR}.loss_scale_factor": spec.loss_scale_factor,
        f"{ROLLOUT}.val_kwargs.do_sample": spec.eval_temperature > 0,
    }


def _launch_values(spec: ProbeSpec, launch: VerlLaunchSettings) -> dict[str, Any]:
    out_dir = launch.out_dir
    return {
        "data.train_files": str(launch.train_file),
        "data.val_files": str(launch.val_file),
        "data.seed": launch.seed,
        "actor_rollout_ref.model.path": str(launch.model_path),
        f"{ACTOR}.data_loader_seed": launch.seed,
        f"{ROLLOUT}.seed": launch.seed,
        "trainer.default_local_dir": str(out_dir / "state"),
        "trainer.rollout_data_dir": str(out_dir / "verl_rollouts"),
        "trainer.validation_data_dir": str(out_dir / "verl_validation"),
        "trainer.experiment_name": f"{_run_name(spec, launch)}-attempt{launch.attempt}",
    }


def _cluster_values(cluster: VerlCluster) -> dict[str, Any]:
    return {
        f"{ROLLOUT}.name": cluster.rollout_engine,
        f"{ROLLOUT}.tensor_model_parallel_size": cluster.rollout_tp,
        f"{ACTOR}.ppo_micro_batch_size_per_gpu": cluster.micro_batch_per_gpu,
        f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu": cluster.micro_batch_per_gpu,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": cluster.micro_batch_per_gpu,
        "trainer.n_gpus_per_node": cluster.n_gpus_per_node,
        "trainer.nnodes": cluster.nnodes,
    }


def _profile_values(spec: ProbeSpec, launch: VerlLaunchSettings) -> dict[str, Any]:
    return {
        f"{ROLLOUT}.val_kwargs.n": spec.passk_samples,
        f"{ROLLOUT}.val_kwargs.temperature": spec.temperature,
        f"{ROLLOUT}.val_kwargs.top_p": spec.top_p,
        f"{ROLLOUT}.val_kwargs.do_sample": True,
        "trainer.val_only": True,
        "trainer.resume_mode": "disable",  # the base's weights, whatever state/ holds
        "trainer.validation_data_dir": str(launch.out_dir / PROFILE_DIR),
        "trainer.experiment_name": f"{_run_name(spec, launch)}-profile",
    }


def _run_name(spec: ProbeSpec, launch: VerlLaunchSettings) -> str:
    return f"{spec.name}-{spec.content_hash()}-seed{launch.seed}"


def _hydra_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    # quoted so that Hydra's override grammar takes braces, quotes and '%' literally
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
