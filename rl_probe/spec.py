"""The probe spec: a frozen, versioned, hashable description of one RL probe.

Probe results are only comparable between checkpoints probed with the same
spec, so everything that changes what a probe measures lives here and enters
`content_hash()`; the seed and the paths do not (they are stage inputs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LossAggMode = Literal[
    "token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
]
KlType = Literal["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"]
# single-box: OctoThinker's format rule, several \boxed{} in one response are a format error.
RewardVariant = Literal["default", "wrong-half", "repetition", "single-box"]
# Bump when an engine (embedded or verl) runs a spec differently — other rollouts, updates or
# metrics for the same spec, checkpoint and seed (part of every probe stage key; the spec's
# content hash covers the spec itself).
# 2: a group's prompt is prefilled and run once, its cache shared by the group's rollouts, in
# sampling and in the update (equal to the separate computation within float32 rounding, not bitwise).
PROBE_CODE_VERSION = 2

QUESTION = "{question}"  # where a template puts the problem's question


class PromptTemplate(BaseModel):
    """How a problem becomes the prompt: plain text, or a message in the checkpoint tokenizer's chat template.

    Rendering (with the tokenizer: its BOS rule, its chat template) is `rl_probe.prompts`; this is
    the part that belongs to the spec and its hash. `text` is the whole prompt (plain) or the user
    message (chat); `{question}` is replaced literally, so LaTeX braces such as `\\boxed{}` need no
    escaping.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    text: str
    chat: bool = False  # render through the checkpoint tokenizer's own chat template
    system: str | None = None  # chat only: a system message (None: whatever the chat template does without one)

    @model_validator(mode="after")
    def _consistent(self) -> "PromptTemplate":
        if QUESTION not in self.text:
            raise ValueError(f"template text must contain {QUESTION}")
        if self.system is not None and not self.chat:
            raise ValueError("a system message needs chat: true (plain templates have no messages)")
        return self

    def body(self, question: str) -> str:
        return self.text.replace(QUESTION, question)


_BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        # OctoThinker's probe template for base models (and the toy world's QA format)
        PromptTemplate(name="question-answer", text="Question: {question}\nAnswer:"),
        # SimpleRL-Zoo's "simple" prompt for Llama / Mistral base models (its `abel` prompt type)
        PromptTemplate(name="simplerl-abel", text="Question:\n{question}\nAnswer:\nLet's think step by step.\n"),
        # SimpleRL-Zoo's `qwen-boxed` prompt: literal ChatML whatever the tokenizer's own chat template
        PromptTemplate(name="simplerl-qwen-boxed", text=(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n{{question}}\n{_BOXED_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")),
        # Open-Reasoner-Zero's zero-RL template (playground/zero_setting_base.py); OctoThinker's `orz_base`
        PromptTemplate(name="orz", text=(
            "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
            "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
            "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
            "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
            "here </answer>. User: You must put your answer inside <answer> </answer> tags, i.e., <answer> answer "
            "here </answer>. And your final answer will be extracted automatically by the \\boxed{} tag.\n"
            "This is the problem:\n{question}\nAssistant: <think>")),
        # the checkpoint tokenizer's own chat template, the question as the user message
        PromptTemplate(name="chat", text="{question}", chat=True),
        # ... with SimpleRL-Zoo's / Qwen-Math's boxed-answer instruction after the question
        PromptTemplate(name="chat-boxed", text=f"{{question}}\n{_BOXED_INSTRUCTION}", chat=True),
        # chat-boxed as SmolLM2's chat template renders it (its default system message), after two
        # solved turns that show the answer format: SmolLM2-135M-Instruct boxes 2 % of its sampled
        # answers to GSM8K word problems in chat-boxed (none of 8 greedy answers to one calculation
        # holds a filled box) and 93 % of its answers to calculations after these (README "A real
        # model"). Literal ChatML,
        # as simplerl-qwen-boxed; the examples are made up, in no problem set.
        PromptTemplate(name="smollm2-chatml-boxed-2shot", text=(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            + "".join(f"<|im_start|>user\n{q}\n{_BOXED_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
                      f"{a} The final answer is \\boxed{{{r}}}.<|im_end|>\n"
                      for q, a, r in (("What is $17 + 10$?", "17 + 10 = 27.", 27),
                                      ("What is $16 \\times 3$?", "16 \\times 3 = 48.", 48)))
            + f"<|im_start|>user\n{{question}}\n{_BOXED_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")),
    )
}


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
    # compute precision of sampling and of the update's forward and backward (autocast); the
    # weights, the optimizer and every log-prob stay float32 (docs/probe-engine.md)
    dtype: Literal["float32", "bfloat16"] = "float32"

    # rollout
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    # a name from PROMPT_TEMPLATES, a text with {question}, or a PromptTemplate's fields
    template: PromptTemplate = PROMPT_TEMPLATES["question-answer"]
    reward_variant: RewardVariant = "default"
    max_prompt_length: int = Field(ge=1)
    # Problems whose prompt is longer than max_prompt_length are dropped from the train and eval
    # sets alike (counted in the stage log, metrics and report); a probe refuses to start when a
    # larger share than this of either set would be dropped.
    max_prompt_drop_share: float = Field(default=0.1, ge=0, le=1)
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
    fewshot_k: int = Field(default=4, ge=0)  # 0: no few-shot evaluation (the step-0 evaluation is 0-shot)

    @field_validator("template", mode="before")
    @classmethod
    def _named_template(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value in PROMPT_TEMPLATES:
                return PROMPT_TEMPLATES[value]
            if QUESTION not in value:
                raise ValueError(f"unknown template {value!r}: give a name ({', '.join(PROMPT_TEMPLATES)}) "
                                 f"or a text containing {QUESTION}")
            return PromptTemplate(text=value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ProbeSpec":
        if self.prompts_per_step % self.mini_batch_prompts:
            raise ValueError("prompts_per_step must be a multiple of mini_batch_prompts")
        if self.eval_temperature == 0 and self.eval_samples != 1:
            raise ValueError("greedy evaluation (eval_temperature=0) is deterministic: eval_samples must be 1")
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

    def content_hash(self) -> str:
        fields = {name: value for name, value in self.model_dump(mode="json").items()
                  if name not in _HASH_NEUTRAL or _HASH_NEUTRAL[name] != value}
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# Fields added after specs had shipped, with the value that leaves a spec's hash what it was
# before the field existed (any other value enters the hash).
_HASH_NEUTRAL = {"dtype": "float32"}


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


# A real pretrained model on CPU: SmolLM2-135M-Instruct (30 layers, 49k vocab) in its own chat
# template with the boxed-answer instruction. 32 rollouts of <= 256 tokens a step (a training step
# on 32 x ~190 tokens costs ~40 s on 2 cores); lr for a 135M model with small batches (verl's
# 1e-6 is for batches of 128 x 16 and hundreds of steps); greedy held-out evaluation.
PROBE_SPECS["smollm2-cpu-v1"] = ProbeSpec(
    name="smollm2-cpu-v1",
    engine="embedded",
    template="chat-boxed",
    group_size=8,
    prompts_per_step=4,
    mini_batch_prompts=4,
    lr=5e-6,
    bypass_mode=True,
    max_prompt_length=256,
    max_response_length=256,
    steps=20,
    eval_every=5,
    eval_samples=1,
    eval_temperature=0.0,
    checkpoint_every=5,
    passk_ks=(1, 2, 4, 8),
    profile_problems=16,
    fewshot_k=2,
)

# v2: problems the base solves sometimes. SmolLM2-135M-Instruct solved none of v1's two-step
# GSM8K problems (0 of 128 samples, 2 % boxed), so v2 probes the calculations those problems'
# solutions make ("What is $48 \\div 2$?", data/gsm8k/*-arith.jsonl) after two solved examples
# that show the box: sampled at temperature 1, pass@8 0.50 [0.31, 0.69], mean accuracy 0.24,
# 93 % boxed, 4 % cut off at 48 tokens (README "A real model"). fewshot_k 0: the template's two
# examples are its shots, so the step-0 profile has no few-shot evaluation of its own.
# The 184-token prompt is most of a rollout's cost (~0.8 s to sample one, ~95 s a step on one
# core), so the budget is 8 steps of 4 x 8 rollouts, evaluation every 4, a pass@k profile of
# 8 x 8: about 17 minutes a probe, for a three-probe sweep within an hour (README).
# Mini-batches of one group (4 updates a step): a probe process peaked at 7 GB with 8 rollouts
# (~230 tokens each) in a backward pass, 12 GB with 16 and over 13 GB with 32 (killed), and a
# sweep runs two probes side by side on a 24 GB machine.
PROBE_SPECS["smollm2-cpu-v2"] = PROBE_SPECS["smollm2-cpu-v1"].model_copy(update={
    "name": "smollm2-cpu-v2",
    "mini_batch_prompts": 1,
    "template": PROMPT_TEMPLATES["smollm2-chatml-boxed-2shot"],
    "max_response_length": 48,
    "fewshot_k": 0,
    "steps": 8,
    "eval_every": 4,
    "checkpoint_every": 4,
    "profile_problems": 8,
})


def get_probe_spec(name: str) -> ProbeSpec:
    try:
        return PROBE_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown probe spec {name!r}; known: {sorted(PROBE_SPECS)}") from None


class SpecSourceError(ValueError):
    """A probe spec that cannot be resolved: an unknown name, a missing or unreadable file."""


def resolve_probe_spec(value: str | dict, base_dir: Path | None = None,
                       overrides: dict[str, Any] | None = None) -> ProbeSpec:
    """A probe spec from what a user writes: a shipped name, a YAML file, or a mapping.

    A mapping is either a full spec or `{base: <shipped name>, <field>: <value>, ...}` (the shipped
    spec with those fields replaced; named `<base>+<fields>` unless it sets `name`). A YAML file
    holds such a mapping. `overrides` apply on top (the `probe` command's `--set`). Raises
    `SpecSourceError`, or pydantic's ValidationError whose locations are the spec's field paths.
    """
    if isinstance(value, str):
        if value in PROBE_SPECS and not overrides:
            return PROBE_SPECS[value]
        if value in PROBE_SPECS:
            value = {"base": value}
        else:
            value = _spec_file(value, base_dir)
    if not isinstance(value, dict):
        raise SpecSourceError(f"expected a spec name, a YAML file or a mapping, got {type(value).__name__}")
    fields = {**value, **(overrides or {})}
    base = fields.pop("base", None)
    if base is None:
        return ProbeSpec.model_validate(fields)
    if base not in PROBE_SPECS:
        raise SpecSourceError(f"base: unknown probe spec {base!r} (known: {', '.join(sorted(PROBE_SPECS))})")
    derived = {"name": f"{base}+{','.join(sorted(fields))}", **fields} if fields else {}
    return ProbeSpec.model_validate({**PROBE_SPECS[base].model_dump(), **derived})


def _spec_file(value: str, base_dir: Path | None) -> dict:
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise SpecSourceError(f"unknown probe spec {value!r} (known: {', '.join(sorted(PROBE_SPECS))}; "
                              f"or the path of a YAML spec file)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecSourceError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise SpecSourceError(f"{path}: a probe spec file must be a YAML mapping")
    return data
