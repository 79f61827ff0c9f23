"""The real-model sweep's problem sets (dev/gsm8k_probe_sets.py) and the prompt of smollm2-cpu-v2."""

import importlib.util
import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

from rl_probe.spec import PROBE_SPECS, PROMPT_TEMPLATES

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / "data" / "gsm8k"


def _load(name: str) -> list[dict]:
    return [json.loads(line) for line in (GSM8K / f"{name}.jsonl").read_text().splitlines()]


def test_the_shipped_sets_are_what_the_script_writes(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gsm8k_probe_sets", REPO / "dev" / "gsm8k_probe_sets.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    shutil.copy(GSM8K / "train.jsonl", tmp_path / "train.jsonl")
    monkeypatch.setattr(script, "ROOT", tmp_path)
    script.main()
    written = sorted(p.name for p in tmp_path.glob("*-*.jsonl"))
    assert written == sorted([f"{split}-{kind}{smoke}.jsonl" for split in ("probe", "eval")
                              for kind in ("2step", "arith") for smoke in ("", "-smoke")]
                             + ["eval-2step-study.jsonl", "eval-arith-study.jsonl"])
    for name in written:
        assert (tmp_path / name).read_text() == (GSM8K / name).read_text(), name


def test_calculations_come_from_their_splits_word_problems_and_are_right():
    words = {split: {p["id"] for p in _load(f"{split}-2step")} for split in ("probe", "eval")}
    arith = {split: _load(f"{split}-arith") for split in ("probe", "eval")}
    assert not {p["question"] for p in arith["probe"]} & {p["question"] for p in arith["eval"]}
    ops = {"+": Fraction.__add__, "-": Fraction.__sub__, "\\times": Fraction.__mul__, "\\div": Fraction.__truediv__}
    for split, problems in arith.items():
        assert len(problems) >= 64 and len({p["question"] for p in problems}) == len(problems)
        for p in problems:
            assert p["id"].rsplit("-calc", 1)[0] in words[split]
            left, op, right = re.fullmatch(r"What is \$(\d+) (\S+) (\d+)\$\?", p["question"]).groups()
            assert ops[op](Fraction(left), Fraction(right)) == Fraction(p["answer"])
        assert _load(f"{split}-arith-smoke") == problems[: len(_load(f"{split}-arith-smoke"))]


def test_the_studys_held_out_set_is_256_calculations_the_probe_never_trains_on():
    study = _load("eval-arith-study")
    words = {p["id"] for p in _load("eval-2step-study")}
    probe_words = {p["id"] for p in _load("probe-2step")}
    assert len(study) == 256 and len({p["question"] for p in study}) == 256
    assert not {p["question"] for p in study} & {p["question"] for p in _load("probe-arith")}
    assert {p["id"].rsplit("-calc", 1)[0] for p in study} <= words and not words & probe_words
    assert {p["id"] for p in _load("eval-2step")} <= words  # the smaller sweep's held-out problems among them
    assert all(p["id"].startswith("gsm8k-train-") for p in study)  # GSM8K train only


def test_the_v2_template_is_smollm2s_chat_template_with_two_solved_turns():
    from jinja2 import Template

    from test_probe_helpers import CHATML  # ChatML as SmolLM2's chat template writes it, after its BOS

    template = PROMPT_TEMPLATES["smollm2-chatml-boxed-2shot"]
    assert PROBE_SPECS["smollm2-cpu-v2"].template == template and not template.chat
    boxed = PROMPT_TEMPLATES["chat-boxed"]
    messages = [{"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"}]
    for question, answer in (("What is $17 + 10$?", "17 + 10 = 27. The final answer is \\boxed{27}."),
                             ("What is $16 \\times 3$?", "16 \\times 3 = 48. The final answer is \\boxed{48}.")):
        messages += [{"role": "user", "content": boxed.body(question)}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": boxed.body("Q?")})
    rendered = Template(CHATML).render(messages=messages, bos_token="", add_generation_prompt=True)
    assert template.body("Q?") == rendered
