"""Write the real-model sweep's probe and eval problem sets from GSM8K *train*.

    python dev/gsm8k_probe_sets.py   # -> data/gsm8k/{probe,eval}-2step[-smoke].jsonl

The easiest GSM8K problems by solution length (two worked steps; 1,960 of 7,473), in a fixed
order by a hash of the question; the first 256 are the probe's RL problems, the next 64 its
held-out eval set (greedy evaluation of a 135M model on CPU costs minutes per eval), disjoint
by construction. The smoke preset's sets are the first 16 and 8 of those. Every corpus the sweep reads from the same file is
decontaminated against both (curation's n-gram filter drops them; the report counts them).
The output is midprobe's problem-set format: {id, question, answer, data_source, difficulty}.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data_recipes.sources import gsm8k_solution

ROOT = Path(__file__).resolve().parents[1] / "data" / "gsm8k"
STEPS = 2
SIZES = {"probe": 256, "eval": 64}
SMOKE = {"probe": 16, "eval": 8}


def main() -> None:
    rows = [json.loads(line) for line in (ROOT / "train.jsonl").read_text().splitlines()]
    chosen = []
    for line_no, row in enumerate(rows, 1):
        steps, final = gsm8k_solution(row["answer"])
        if len(steps.splitlines()) == STEPS:
            chosen.append({"id": f"gsm8k-train-{line_no}", "question": row["question"], "answer": final,
                           "data_source": "gsm8k-train", "difficulty": STEPS})
    chosen.sort(key=lambda p: hashlib.sha256(p["question"].encode()).hexdigest())
    start = 0
    for split, size in SIZES.items():
        problems = chosen[start:start + size]
        start += size
        for suffix, n in (("", size), ("-smoke", SMOKE[split])):
            path = ROOT / f"{split}-{STEPS}step{suffix}.jsonl"
            path.write_text("".join(json.dumps(p) + "\n" for p in problems[:n]))
            print(path, n)


if __name__ == "__main__":
    main()
