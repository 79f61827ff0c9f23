"""Decontamination measured on real train data, with held-out *train* items as the benchmark.

No test split is read: every 25th GSM8K-train and MATH-train problem plays the benchmark, and
the corpus is the other train problems with their solutions (the false removals: near-duplicate
templates a user will want to see) plus each benchmark item planted in five disguises.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from datatrove.data import Document

from data_recipes.calibration import gsm8k_train, math_train
from data_recipes.decont import BenchmarkDecontFilter, normalize, write_index
from data_recipes.words import RegexWordTokenizer

_WORDS = RegexWordTokenizer()
_FILLER = ("Posted in the homework help forum last week. ", "Many students asked about this one. ",
           "Here is a classic exercise that appeared in several textbooks. ")


def split_benchmark(every: int = 25) -> tuple[list[dict], list[str]]:
    """(benchmark items {question, answer, source}, corpus documents: the other train items)."""
    items, corpus = [], []
    for source, records, q, a in (("gsm8k", gsm8k_train(), "question", "answer"),
                                  ("math", math_train(), "problem", "solution")):
        for i, record in enumerate(records):
            if i % every == 0:
                items.append({"question": record[q], "answer": record[a], "source": source})
            else:
                corpus.append(f"{record[q]}\n{record[a]}")
    return items, corpus


def disguises(item: dict, rng: random.Random) -> dict[str, str | None]:
    """The item as a contaminated document might hold it; first_half (the first half of its words)
    is None when it has under 13 words after normalisation (the goal is halves of 13 or more)."""
    q = item["question"]
    words = q.split()
    half = " ".join(words[: len(words) // 2])
    shouted = "".join(c.upper() if rng.random() < 0.5 else c for c in q).replace(". ", " ! ").replace(", ", " ; ")
    return {
        "verbatim": q,
        "with_solution": f"Problem: {q}\nSolution: {item['answer']}",
        "embedded": f"{rng.choice(_FILLER)}{q} {rng.choice(_FILLER)}",
        "case_punctuation": shouted,
        "first_half": f"{half} ..." if len(_WORDS.word_tokenize(normalize(half))) >= 13 else None,
    }


def measure(n_grams: int, every: int = 25, seed: int = 0) -> dict:
    items, corpus = split_benchmark(every)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Path(tmp) / "heldout.jsonl"
        bench.write_text("".join(json.dumps({"question": i["question"], "answer": i["answer"]}) + "\n" for i in items))
        write_index([bench], n_grams, Path(tmp) / "index")
        block = BenchmarkDecontFilter(Path(tmp) / "index")
        caught: dict[str, list[int]] = {}
        for item in items:
            for kind, text in disguises(item, rng).items():
                if text is not None:
                    caught.setdefault(kind, []).append(block.filter(Document(text=text, id="p")) is not True)
        flagged = [t for t in corpus if block.filter(Document(text=t, id="c")) is not True]
    short = sum(len(_WORDS.word_tokenize(normalize(i["question"]))) < n_grams for i in items)
    return {"n_grams": n_grams, "benchmark_items": len(items), "short_items": short,
            "recall": {k: f"{sum(v)}/{len(v)}" for k, v in caught.items()},
            "false_removals": f"{len(flagged)}/{len(corpus)}", "false_removal_examples": [t[:160] for t in flagged[:3]]}


if __name__ == "__main__":  # python -m data_recipes.decont_calibration [N ...]
    import sys

    for n in map(int, sys.argv[1:] or (8, 10, 13)):
        print(json.dumps(measure(n)), flush=True)
