"""The probe spec: a frozen, versioned, hashable description of one RL probe.

Probe results are only comparable between checkpoints probed with the same
spec, so everything that changes what a probe measures lives here and enters
`content_hash()`; the seed and the paths do not (they are stage inputs).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

LossAggMode = Literal[
    "token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
]
KlType = Literal["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"]
# single-box: OctoThinker's format rule, several \boxed{} in one response are a format error.
RewardVariant = Literal["default", "wrong-half", "repetition", "single-box"]
# Bump when an engine (embedded or verl) runs a spec differently — other rollouts, updates or
# metrics for the same spec, checkpoint and seed (part of every probe stage key; the spec's
# content hash covers the spec itself).
PROBE_CODE_VERSION = 1


class ProbeSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: int = 1
    engine: Literal["embedded", "verl"]

    # algorithm (verl names in comments where they differ)
    adv_estimator: Literal["grpo"] = "grpo"
    norm_adv_by_std: bool = True  # algorithm.norm_adv_by_std_in_grpo; False = Dr.GRPO
    policy_loss: Literal["vanilla"] = "vanilla"
    group_size: int = Field(ge=2)  # rollout.n
    prompts_per_step: int = Field(ge=1)  # data.train_batch_size
    mini_batch_prompts: int = Field(ge=1)  # actor.ppo_mini_batch_size (in prompts, as in verl)
    ppo_epochs: int = Field(default=1, ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = 0.01  # verl's actor optim default
    grad_clip: float = 1.0
    kl_coef: float = Field(default=0.0, ge=0)  # actor.kl_loss_coef; 0 disables the KL loss
    kl_type: KlType = "low_var_kl"
    entropy_coeff: float = 0.0
    loss_agg_mode: LossAggMode = "token-mean"
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    # algorithm.rollout_correction.bypass_mode: the rollout's own log-probs serve as the old
    # policy's instead of a recomputing forward pass. Exact for the embedded engine, whose
    # sampler scores tokens with the training weights in fp32 (tests/test_probe_sampler.py);
    # an approximation under vLLM/SGLang, whose kernels and precision differ.
    bypass_mode: bool = False

    # rollout
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    template: str = "Question: {question}\nAnswer:"
    reward_variant: RewardVariant = "default"
    max_prompt_length: int = Field(ge=1)
    max_response_length: int = Field(ge=1)
    # {first_step: max_response_length}; the entry with the largest key <= step wins.
    length_schedule: dict[int, int] | None = None

    # schedule and evaluation
    steps: int = Field(ge=1)
    eval_every: int = Field(ge=1)
    eval_samples: int = Field(default=1, ge=1)  # N in val-core/<source>/acc/mean@N
    eval_temperature: float = Field(default=0.0, ge=0)  # 0 = greedy (verl's val_kwargs default)
    checkpoint_every: int = Field(default=10, ge=1)

    # step-0 base profile
    passk_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    profile_problems: int = Field(default=32, ge=1)
    fewshot_k: int = Field(default=4, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "ProbeSpec":
        if self.prompts_per_step % self.mini_batch_prompts:
            raise ValueError("prompts_per_step must be a multiple of mini_batch_prompts")
        if self.eval_temperature == 0 and self.eval_samples != 1:
            raise ValueError("greedy evaluation (eval_temperature=0) is deterministic: eval_samples must be 1")
        if "{question}" not in self.template:
            raise ValueError("template must contain {question}")
        if not self.passk_ks or min(self.passk_ks) < 1:
            raise ValueError("passk_ks must be positive")
        if self.length_schedule is not None and 0 not in self.length_schedule:
            raise ValueError("length_schedule must start at step 0")
        return self

    @property
    def passk_samples(self) -> int:
        """Samples per problem for the pass@k profile: enough for the largest k."""
        return max(self.passk_ks)

    def response_length_at(self, step: int) -> int:
        if not self.length_schedule:
            return self.max_response_length
        return self.length_schedule[max(s for s in self.length_schedule if s <= step)]

    @property
    def longest_response(self) -> int:
        return max((self.length_schedule or {}).values(), default=self.max_response_length)

    def render_prompt(self, question: str) -> str:
        return self.template.format(question=question)

    def content_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


PROBE_SPECS: dict[str, ProbeSpec] = {
    spec.name: spec
    for spec in (
        # The demo probe for ~1M-param toy models on a CPU core: 128 rollouts of
        # <= 48 tokens per step. lr is far above OctoThinker's 1e-6 because tiny
        # models need it to move within tens of steps (1e-4 barely moved them).
        ProbeSpec(
            name="toy-cpu-v1",
            engine="embedded",
            group_size=8,
            prompts_per_step=16,
            mini_batch_prompts=8,
            lr=5e-4,
            max_prompt_length=96,
            max_response_length=48,
            steps=40,
            eval_every=5,
            eval_samples=4,
            eval_temperature=1.0,
            checkpoint_every=5,
            profile_problems=32,
            fewshot_k=4,
        ),
        # v2 for toy world v4, whose worked solutions restate each step (~15 tokens a step):
        # 96 response tokens fit four steps; 16 samples per prompt at the same 128 rollouts
        # per step leave fewer zero-variance groups than v1's 8.
        ProbeSpec(
            name="toy-cpu-v2",
            engine="embedded",
            group_size=16,
            prompts_per_step=8,
            mini_batch_prompts=4,
            lr=5e-4,
            max_prompt_length=96,
            max_response_length=96,
            steps=40,
            eval_every=5,
            eval_samples=4,
            eval_temperature=1.0,
            checkpoint_every=5,
            profile_problems=32,
            fewshot_k=4,
        ),
        # Seconds on one core: for tests of the machinery, not for results.
        ProbeSpec(
            name="toy-smoke-v1",
            engine="embedded",
            group_size=4,
            prompts_per_step=4,
            mini_batch_prompts=2,
            lr=1e-3,
            max_prompt_length=64,
            max_response_length=12,
            steps=4,
            eval_every=2,
            eval_samples=2,
            eval_temperature=1.0,
            checkpoint_every=2,
            passk_ks=(1, 2, 4, 8),
            profile_problems=4,
            fewshot_k=2,
        ),
        # OctoThinker's paper probe (GRPO in verl on MATH8K): batch 128 x 16
        # rollouts, mini-batch 64, temperature 1.0, lr 1e-6, KL 0, 4096 tokens,
        # validation every 4 steps, greedy.
        ProbeSpec(
            name="octothinker-v1",
            engine="verl",
            group_size=16,
            prompts_per_step=128,
            mini_batch_prompts=64,
            lr=1e-6,
            kl_coef=0.0,
            entropy_coeff=0.0,
            max_prompt_length=1024,
            max_response_length=4096,
            steps=200,
            eval_every=4,
            checkpoint_every=40,
            passk_ks=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            profile_problems=128,
            fewshot_k=4,
            reward_variant="single-box",  # OctoThinker's format rule: a repeated box is a format error
        ),
    )
}


# v3 = v2 with held-out accuracy as mean@2 instead of mean@4: evaluation was half of a
# probe's cost, and the demo must finish within 15 minutes on 2 cores.
PROBE_SPECS["toy-cpu-v3"] = PROBE_SPECS["toy-cpu-v2"].model_copy(update={"name": "toy-cpu-v3", "eval_samples": 2})
# v4 = v3 at a tenth of the learning rate. Toy world v6's chain-of-thought checkpoint is a
# working policy (training score 0.47 at step 1), and Adam's first, sign-like steps at 5e-4
# wrecked it in one step (0.00 at step 2); 2e-4 halved it; 1.5e-5 to 1e-4 kept it (held-out
# accuracy 0.39 -> 0.39-0.45 over 40 steps; one checkpoint, seed 0). Earlier toy checkpoints
# were near chance, where a large step costs nothing.
PROBE_SPECS["toy-cpu-v4"] = PROBE_SPECS["toy-cpu-v3"].model_copy(update={"name": "toy-cpu-v4", "lr": 5e-5})
# v5 = v4 with the old policy's log-probs taken from the rollout (verl's bypass mode): the
# embedded sampler scores tokens with the training weights, so the recomputing forward pass
# (a fifth of a step) bought nothing.
PROBE_SPECS["toy-cpu-v5"] = PROBE_SPECS["toy-cpu-v4"].model_copy(update={"name": "toy-cpu-v5", "bypass_mode": True})


def get_probe_spec(name: str) -> ProbeSpec:
    try:
        return PROBE_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown probe spec {name!r}; known: {sorted(PROBE_SPECS)}") from None
