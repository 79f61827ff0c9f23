"""Write the real-model sweep's probe and eval problem sets from GSM8K *train*.

    python dev/gsm8k_probe_sets.py   # -> data/gsm8k/{probe,eval}-{2step,arith}[-smoke].jsonl

Word problems (`*-2step*`, probe spec smollm2-cpu-v1): the easiest GSM8K problems by solution
length (two worked steps; 1,960 of 7,473), in a fixed order by a hash of the question; the
first 256 are the probe's RL problems, the next 64 its held-out eval set (greedy evaluation of a
135M model on CPU costs minutes per eval), disjoint by construction. The smoke preset's sets
are the first 16 and 8 of those.

Arithmetic (`*-arith*`, smollm2-cpu-v2): SmolLM2-135M-Instruct solves none of those word
problems (docs/smollm2.md), so v2 probes one step below them: the calculations those same
problems' solutions make, from GSM8K's calculator annotations (`<<48/2=24>>` -> "What is
$48 \\div 2$?", answer 24; two whole operands, a whole result). The probe set's calculations come
from the 256 probe word problems, the eval set's from the 64 eval word problems (a calculation
in both stays in the probe set only), each in the hash order of its text. The sweep
decontaminates its corpora against the word problems too (`probe.benchmarks`), so no corpus
holds the solution a calculation came from.

Every corpus the sweep reads from the same file is decontaminated against these sets
(curation's n-gram filter drops them; the report counts them). The output is midprobe's
problem-set format: {id, question, answer, data_source, difficulty}.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from data_recipes.sources import gsm8k_solution

ROOT = Path(__file__).resolve().parents[1] / "data" / "gsm8k"
STEPS = 2
SIZES = {"probe": 256, "eval": 64}
SMOKE = {"probe": 16, "eval": 8}
# The SmolLM2 study's held-out set (pipelines/sweeps/smollm2-study.yaml): the calculations of the
# 256 word problems after the probe's (the 64 eval ones among them), the first STUDY_EVAL of them.
STUDY_WORDS, STUDY_EVAL = 256, 256
# GSM8K's calculator annotation of one binary operation on whole numbers with a whole result
_CALCULATION = re.compile(r"<<\s*(\d+)\s*([-+*/x])\s*(\d+)\s*=\s*(-?\d+)\s*>>")
_LATEX_OP = {"+": "+", "-": "-", "*": "\\times", "x": "\\times", "/": "\\div"}


def _hash_order(problems: list[dict]) -> list[dict]:
    return sorted(problems, key=lambda p: hashlib.sha256(p["question"].encode()).hexdigest())


def _write(split: str, kind: str, problems: list[dict], smoke: int) -> None:
    for suffix, n in (("", len(problems)), ("-smoke", smoke)):
        path = ROOT / f"{split}-{kind}{suffix}.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in problems[:n]))
        print(path, n)


def word_problems(rows: list[dict]) -> dict[str, list[dict]]:
    """{split: two-step word problems with the raw GSM8K answer under `solution`}; split "study"
    starts where "eval" does and runs on for STUDY_WORDS problems."""
    chosen = []
    for line_no, row in enumerate(rows, 1):
        steps, final = gsm8k_solution(row["answer"])
        if len(steps.splitlines()) == STEPS:
            chosen.append({"id": f"gsm8k-train-{line_no}", "question": row["question"], "answer": final,
                           "data_source": "gsm8k-train", "difficulty": STEPS, "solution": row["answer"]})
    chosen = _hash_order(chosen)
    splits, start = {}, 0
    for split, size in SIZES.items():
        splits[split] = chosen[start:start + size]
        start += size
    splits["study"] = chosen[SIZES["probe"]:SIZES["probe"] + STUDY_WORDS]
    return splits


def calculations(problems: list[dict], exclude: set[str]) -> list[dict]:
    """The distinct calculations annotated in `problems`' solutions, as arithmetic problems."""
    found = {}
    for problem in problems:
        for step, (left, op, right, result) in enumerate(_CALCULATION.findall(problem["solution"]), 1):
            question = f"What is ${left} {_LATEX_OP[op]} {right}$?"
            if question not in exclude and question not in found:
                found[question] = {"id": f"{problem['id']}-calc{step}", "question": question, "answer": result,
                                   "data_source": "gsm8k-train-arith", "difficulty": 1}
    return _hash_order(list(found.values()))


def main() -> None:
    rows = [json.loads(line) for line in (ROOT / "train.jsonl").read_text().splitlines()]
    words = word_problems(rows)
    for split in SIZES:
        _write(split, f"{STEPS}step", _without_solution(words[split]), SMOKE[split])
    probe = calculations(words["probe"], exclude=set())
    evals = calculations(words["eval"], exclude={p["question"] for p in probe})
    _write("probe", "arith", probe, SMOKE["probe"])
    _write("eval", "arith", evals, SMOKE["eval"])
    study = calculations(words["study"], exclude={p["question"] for p in probe})
    if len(study) < STUDY_EVAL:
        raise SystemExit(f"the study's {STUDY_WORDS} word problems make {len(study)} calculations, not {STUDY_EVAL}")
    _write_whole("eval-2step-study", _without_solution(words["study"]))
    _write_whole("eval-arith-study", study[:STUDY_EVAL])


def _without_solution(problems: list[dict]) -> list[dict]:
    return [{k: v for k, v in p.items() if k != "solution"} for p in problems]


def _write_whole(name: str, problems: list[dict]) -> None:
    path = ROOT / f"{name}.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    print(path, len(problems))


if __name__ == "__main__":
    main()
