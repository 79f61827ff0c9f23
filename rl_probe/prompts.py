"""Problems to prompts: the one rendering used by the embedded engine, the step-0 profile,
difficulty control and the verl parquet.

A prompt is rendered to text and tokenized as verl does (`add_special_tokens=False` on the
rendered text), so both engines see the same token ids by construction:

- a plain template gets the tokenizer's own leading special tokens (its BOS when it adds one,
  e.g. Llama's `<s>`; nothing for GPT-2-style tokenizers that add none) as text before it;
- a chat template gets exactly what the tokenizer's chat template renders (its BOS if the
  template writes one), with the generation prompt.

A response stops at the tokenizer's EOS, at any EOS id the checkpoint's generation config
lists, and at the chat template's end-of-turn token (e.g. `<|im_end|>`).
"""

from __future__ import annotations

import json
from pathlib import Path

from rl_probe.spec import QUESTION, ProbeSpec

_TURN_MARK = "\u2063midprobe-turn\u2063"  # an assistant message no chat template changes


class PromptLengthError(ValueError):
    """More prompts are over max_prompt_length than the spec's max_prompt_drop_share allows."""


def load_problems(path: Path) -> list[dict]:
    """A problem set in midprobe's format ({id, question, answer, data_source, difficulty?}), one JSON per line."""
    problems = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            problem = json.loads(line)
            missing = [k for k in ("id", "question", "answer", "data_source") if k not in problem]
            if missing:
                raise ValueError(f"{path}:{line_no}: problem has no {', '.join(missing)} field")
            problems.append(problem)
    return problems


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text when it adds its special tokens (its BOS rule)."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def end_of_turn_id(tokenizer) -> int | None:
    """The token the chat template writes right after an assistant message, when it is a special token."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": _TURN_MARK}], tokenize=False)
    after = text.split(_TURN_MARK, 1)[1] if _TURN_MARK in text else ""
    ids = tokenizer.encode(after, add_special_tokens=False)
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return ids[0] if ids and ids[0] in special else None


class Prompter:
    """Renders and tokenizes the spec's template for one checkpoint's tokenizer."""

    def __init__(self, tokenizer, spec: ProbeSpec, generation_eos: int | list[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.spec = spec
        self.template = spec.template
        if self.template.chat and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"probe spec {spec.name!r} uses the chat template ({self.template.name}), "
                             f"but the checkpoint's tokenizer has none")
        self.prefix = tokenizer.decode(leading_special_ids(tokenizer))
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        generation_eos = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
        stops = [self.eos_id, *generation_eos, end_of_turn_id(tokenizer)]
        self.stop_ids = sorted({i for i in stops if i is not None})

    def render(self, problem: dict, shots: list[dict] = ()) -> str:
        """The prompt text for `problem`, after `shots` solved examples (answers shown as \\boxed{})."""
        template = self.template
        if template.chat:
            messages = [{"role": "system", "content": template.system}] if template.system is not None else []
            for shot in shots:
                messages += [{"role": "user", "content": template.body(shot["question"])},
                             {"role": "assistant", "content": f"\\boxed{{{shot['answer']}}}"}]
            messages.append({"role": "user", "content": template.body(problem["question"])})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        examples = "".join(f"{template.body(s['question'])} \\boxed{{{s['answer']}}}\n\n" for s in shots)
        return self.prefix + examples + template.body(problem["question"])

    @property
    def fewshot_stop(self) -> str | None:
        """Where a base model's answer ends when it goes on with another few-shot example."""
        if self.template.chat:
            return None  # the turn ends with the end-of-turn token
        lead = self.template.text.split(QUESTION, 1)[0].strip()
        return "\n" + lead if lead else "\n\n"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, problem: dict) -> list[int]:
        return self.encode(self.render(problem))

    def fits(self, problem: dict) -> bool:
        return len(self.prompt_ids(problem)) <= self.spec.max_prompt_length

    def within_length(self, problems: list[dict], what: str) -> tuple[list[dict], dict]:
        """The problems whose prompt fits max_prompt_length, and the counts; refuses (PromptLengthError)
        when more than the spec's max_prompt_drop_share of them would be dropped."""
        kept = [p for p in problems if self.fits(p)]
        counts = {"total": len(problems), "kept": len(kept), "dropped": len(problems) - len(kept)}
        share = counts["dropped"] / max(1, len(problems))
        if share > self.spec.max_prompt_drop_share:
            raise PromptLengthError(
                f"{what}: {counts['dropped']} of {len(problems)} prompts ({share:.0%}) are longer than "
                f"max_prompt_length={self.spec.max_prompt_length} tokens with template "
                f"{self.template.name!r}; probe spec {self.spec.name!r} allows {self.spec.max_prompt_drop_share:.0%} "
                f"(max_prompt_drop_share)")
        return kept, counts

    def decode(self, rollout) -> list[str]:
        return [
            self.tokenizer.decode(ids[mask], skip_special_tokens=True)
            for ids, mask in zip(rollout.response_ids, rollout.response_mask)
        ]


def problems_within_length(prompter: Prompter, train_set: Path, eval_set: Path) -> tuple[list, list, dict]:
    """Train and eval problems whose prompts fit the spec's max_prompt_length (the same rule for both,
    so eval numbers are over a stated set); the counts go to the stage log, metrics and summary."""
    train, train_counts = prompter.within_length(load_problems(train_set), f"train set {train_set}")
    evals, eval_counts = prompter.within_length(load_problems(eval_set), f"eval set {eval_set}")
    counts = {"max_prompt_length": prompter.spec.max_prompt_length, "train": train_counts, "eval": eval_counts}
    print(f"prompts over max_prompt_length={counts['max_prompt_length']} tokens: dropped "
          f"{train_counts['dropped']} of {train_counts['total']} train and {eval_counts['dropped']} of "
          f"{eval_counts['total']} eval problems", flush=True)
    return train, evals, counts
