"""Can a toy-world checkpoint copy from its context? The diagnostic behind docs/toy-world.md.

    python dev/toy_copy_probe.py WORKSPACE/midtrain/<key>/hf [more checkpoints ...]

Prints, per checkpoint:
- induction: next-token accuracy on the second half of a repeated random token sequence
  (generic in-context copying; tokens the toy corpora never use make this a lower bound);
- teacher-forced accuracy of a qa_cot worked solution on held-out problems, by token role:
  `start` (day 1's left number, found in the question), `change_q` (day 1's change, found in
  the question), `count_q` (day 1's day count, found in the question), `count` (a later
  line's count), `left` (a later day's left number: the result just written), `change`
  (a later day's change: the one in the previous equation), `fact` (the equation's result),
  `next_day` / `stop` (after a day, "Day" again or, after the last one, "The"),
  `answer` (the boxed answer after a correct worked solution).
A worked-solution recipe can only win under RL if every role is well above chance.
"""

from __future__ import annotations

import random
import re
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_recipes.toyworld import ToyWorld, ToyWorldConfig


# one line of a worked solution, as ToyWorld writes it; the groups are the scored roles
LINE = re.compile(r"(?P<next_day>Day) \d+ of (?P<count>\d+): (?P<left>\d+) [+-] (?P<change>\d+) = (?P<fact>\d+)\.")
FIRST_LINE_ROLES = {"count": "count_q", "left": "start", "change": "change_q", "next_day": None}


def worked_solutions(n: int = 150, seed: int = 7) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """qa_cot documents of held-out problems with the character span and role of each scored part."""
    world, rng = ToyWorld(ToyWorldConfig()), random.Random(seed)
    docs = []
    for i in range(n):
        steps, scene = world._draw("eval", 2 + i % 3, rng)
        text = f"{world._problem(steps, scene, 'eval').prompt} {world.cot_answer(steps)}"
        spans = []
        for line_no, line in enumerate(LINE.finditer(text)):
            for group in LINE.groupindex:
                role = FIRST_LINE_ROLES.get(group, group) if line_no == 0 else group
                if role:
                    spans.append((*line.span(group), role))
        stop = text.index("The answer is")
        spans.append((stop, stop + 3, "stop"))
        answer = text.index("\\boxed{") + len("\\boxed{")
        spans.append((answer, text.index("}", answer), "answer"))
        docs.append((text, spans))
    return docs


@torch.no_grad()
def induction_accuracy(model, vocab_size: int, length: int = 30, rows: int = 32) -> float:
    tokens = torch.randint(20, vocab_size, (rows, length), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([tokens, tokens], 1)
    predicted = model(ids).logits.argmax(-1)
    return (predicted[:, length:-1] == ids[:, length + 1:]).float().mean().item()


@torch.no_grad()
def role_accuracy(model, tokenizer, docs) -> dict[str, float]:
    hits: dict[str, list[int]] = {}
    for text, spans in docs:
        encoded = tokenizer(text, return_offsets_mapping=True)
        ids = torch.tensor([encoded["input_ids"]])
        predicted = model(ids).logits[0].argmax(-1)
        for t, (start, end) in enumerate(encoded["offset_mapping"][1:], start=1):
            if not text[start:end].strip():
                continue  # a lone space token carries no content to copy
            for s0, s1, role in spans:
                if start < s1 and end > s0:
                    hits.setdefault(role, []).append(int(predicted[t - 1] == ids[0, t]))
    return {role: sum(v) / len(v) for role, v in sorted(hits.items())}


def main(checkpoints: list[str]) -> None:
    torch.set_num_threads(1)
    docs = worked_solutions()
    for path in checkpoints:
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        roles = role_accuracy(model, tokenizer, docs)
        print(path, f"induction={induction_accuracy(model, model.config.vocab_size):.2f}",
              " ".join(f"{role}={acc:.2f}" for role, acc in roles.items()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
