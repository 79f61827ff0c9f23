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

from runfiles.canonical import Canonical

LossAggMode = Literal[
    "token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
]
KlType = Literal["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"]
# single-box: OctoThinker's format rule, several \boxed{} in one response are a format error.
RewardVariant = Literal["default", "wrong-half", "repetition", "single-box"]

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
        # solved turns that show the answer format, which SmolLM2-135M-Instruct rarely uses without
        # them (docs/results/2026-11-27-smollm2.md). Literal ChatML, as simplerl-qwen-boxed; the
        # examples are made up, in no problem set.
        PromptTemplate(name="smollm2-chatml-boxed-2shot", text=(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            + "".join(f"<|im_start|>user\n{q}\n{_BOXED_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
                      f"{a} The final answer is \\boxed{{{r}}}.<|im_end|>\n"
                      for q, a, r in (("What is $17 + 10$?", "17 + 10 = 27.", 27),
                                      ("What is $16 \\times 3$?", "16 \\times 3 = 48.", 48)))
            + f"<|im_start|>user\n{{question}}\n{_BOXED_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")),
    )
}


class ProbeSpec(Canonical):
    # fields added after the first specs were shipped: they count in the hash only when set away
    # from their default, so specs that do not use them keep their hash and their runs' keys
    OMIT_AT_DEFAULT = frozenset({"reward_control", "eval_sampled", "dtype"})

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
    # random: the spurious-reward control. Each group's rewards are shuffled among its rollouts
    # (a seeded random permutation), so a group keeps its rewards' mean and spread, and GRPO its
    # advantages' sizes, but which response earns which reward carries no information: whatever
    # such a probe gains comes from the update itself (format priors, clipping), not from
    # learning what is right (docs/probe-specs.md "The random-reward control").
    reward_control: Literal["none", "random"] = "none"
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
    # k > 0: beside a greedy evaluation, avg@k at the first and the last eval: k samples per held-out
    # problem at the probe's temperature and top_p, logged as val-core/<source>/acc/mean@k (rollout
    # rows with split "eval-sampled"); what users compare models on, and less noisy than greedy pass@1
    eval_sampled: int = Field(default=0, ge=0)
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
        if self.eval_sampled and (self.eval_temperature > 0 or self.eval_sampled < 2 or self.engine != "embedded"):
            raise ValueError("eval_sampled: k >= 2 samples beside a greedy evaluation (eval_temperature 0), "
                             "embedded engine; a sampled evaluation is already avg@eval_samples")
        if self.reward_control != "none" and self.engine != "embedded":
            raise ValueError("reward_control: the random-reward control runs on the embedded engine only")
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

    @property
    def loss_scale_factor(self) -> int:
        """Dr.GRPO's constant token-sum divisor under seq-mean-token-sum-norm (verl's
        actor.loss_scale_factor): the longest response the probe may generate, the same at
        every step whatever its rollouts' lengths."""
        return self.longest_response

    def with_random_reward(self) -> "ProbeSpec":
        """This spec as its random-reward control: its own name and hash, greedy evaluation only.

        The control is read on greedy held-out accuracy alone (the report's gain beside the
        probe's), so it leaves out the sampled avg@k evaluation, most of a probe's evaluation
        cost (docs/results/2026-12-05-smollm2-study-time.md); everything else is the same."""
        return ProbeSpec.model_validate({**self.model_dump(), "name": f"{self.name}+random-reward",
                                         "reward_control": "random", "eval_sampled": 0})

    def content_hash(self) -> str:
        canonical = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


SPEC_DIR = Path(__file__).with_name("specs")


def _load_catalogue(directory: Path) -> dict[str, ProbeSpec]:
    specs = {}
    for path in sorted(directory.glob("*.yaml")):
        spec = ProbeSpec.model_validate(yaml.safe_load(path.read_text()))
        if spec.name != path.stem:
            raise ValueError(f"{path}: name {spec.name!r} must match the file name")
        specs[spec.name] = spec
    return specs


# The shipped specs, one YAML file each in rl_probe/specs/. Retired ones (rl_probe/specs/retired/)
# still resolve, so runs made with them keep their hashes, but `midprobe specs` lists the current.
CURRENT_SPECS: dict[str, ProbeSpec] = _load_catalogue(SPEC_DIR)
PROBE_SPECS: dict[str, ProbeSpec] = {**_load_catalogue(SPEC_DIR / "retired"), **CURRENT_SPECS}


def get_probe_spec(name: str) -> ProbeSpec:
    try:
        return PROBE_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown probe spec {name!r}; known: {sorted(CURRENT_SPECS)}") from None


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
        raise SpecSourceError(f"base: unknown probe spec {base!r} (known: {', '.join(sorted(CURRENT_SPECS))})")
    derived = {"name": f"{base}+{','.join(sorted(fields))}", **fields} if fields else {}
    return ProbeSpec.model_validate({**PROBE_SPECS[base].model_dump(), **derived})


def _spec_file(value: str, base_dir: Path | None) -> dict:
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise SpecSourceError(f"unknown probe spec {value!r} (known: {', '.join(sorted(CURRENT_SPECS))}; "
                              f"or the path of a YAML spec file)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecSourceError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise SpecSourceError(f"{path}: a probe spec file must be a YAML mapping")
    return data
