"""The bundled real *train* data (data/README.md) as calibration sets for filters, decontamination
and the reward, and the general-web sample (data/web/README.md) a math corpus should lose. Test
splits are never read here: they are evaluation data."""

from __future__ import annotations

import collections
import gzip
import json
from functools import cache
from pathlib import Path

from datatrove.data import Document

from data_recipes.filters import build_filters

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
GSM8K_TRAIN = DATA_DIR / "gsm8k" / "train.jsonl"
MATH_TRAIN = DATA_DIR / "math" / "train.jsonl.gz"
GENERAL_WEB = DATA_DIR / "web" / "general_web.jsonl.gz"


@cache
def gsm8k_train() -> tuple[dict, ...]:
    """GSM8K train records: `question`, `answer` (worked solution ending in `#### <number>`)."""
    with GSM8K_TRAIN.open() as f:
        return tuple(json.loads(line) for line in f)


@cache
def math_train() -> tuple[dict, ...]:
    """MATH train records: `id`, `problem`, `level`, `type`, `solution` (answer in `\\boxed{}`)."""
    with gzip.open(MATH_TRAIN, "rt") as f:
        return tuple(json.loads(line) for line in f)


@cache
def general_web() -> tuple[dict, ...]:
    """General-web pages (not math): `id`, `source`, `licence`, `text` (data/web/README.md)."""
    with gzip.open(GENERAL_WEB, "rt") as f:
        return tuple(json.loads(line) for line in f)


def run_chain(chain: list, texts: list[str]) -> int:
    """Documents kept when datatrove's steps run over the texts in order; each step's `stats` then
    count what it dropped and why."""
    data = (Document(text=t, id=str(i)) for i, t in enumerate(texts))
    for step in chain:
        data = step.run(data, rank=0, world_size=1)
    return sum(1 for _ in data)


def rejection(texts: list[str], preset: str) -> dict:
    """Share of the texts the preset's filters drop, by the dropping filter's reason (its name when
    it gives none), from the filters' own datatrove stats."""
    filters = build_filters(preset)
    kept = run_chain(list(filters.values()), texts)
    reasons = collections.Counter()
    for name, block in filters.items():
        counts = {label: int(stat.total) for label, stat in block.stats.stats.items()}
        by_reason = {label.removeprefix("dropped_"): n for label, n in counts.items() if label.startswith("dropped_")}
        reasons.update(by_reason)
        if unexplained := counts.get("dropped", 0) - sum(by_reason.values()):
            reasons[name] += unexplained
    return {"preset": preset, "pages": len(texts), "rejected": round(1 - kept / len(texts), 3),
            "reasons": dict(reasons)}


def real_math_documents(every: int = 1) -> dict[str, list[str]]:
    """The documents a math corpus must keep, by kind; `every` > 1 takes every n-th record."""
    gsm, math = gsm8k_train()[::every], math_train()[::every]
    return {
        "gsm8k_question": [r["question"] for r in gsm],
        "gsm8k_question_solution": [f"{r['question']}\n{r['answer']}" for r in gsm],
        "math_question_solution": [f"{r['problem']}\n{r['solution']}" for r in math],
    }
