"""Curation benchmark: the math preset vs datatrove's stock spaCy web chain on math text.

Both chains run as datatrove pipeline steps in this process on the same documents: toy
math-web documents and LaTeX-style worked solutions (generated here, since nothing may be
downloaded). Reported: documents per CPU-second over the whole chain and the share of
documents each chain keeps.
"""

from __future__ import annotations

import random
import time

from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter

from data_recipes.filters import build_filters
from data_recipes.toyworld import ToyWorld

_LATEX_STEPS = (
    "Subtracting ${b}$ from both sides gives ${a}x = {c_minus_b}$, so $x = \\frac{{{c_minus_b}}}{{{a}}}$.",
    "We expand $({a}x + {b})^2 = {a2}x^2 + {two_ab}x + {b2}$ and compare coefficients.",
    "By the quadratic formula, $x = \\frac{{-{b} \\pm \\sqrt{{{b2} - 4 \\cdot {a} \\cdot {c}}}}}{{2 \\cdot {a}}}$.",
    "The sum $\\sum_{{k=1}}^{{{c}}} k = \\frac{{{c}({c}+1)}}{{2}}$ follows by pairing the first and last terms.",
    "Since ${a} \\cdot {b} = {ab}$, the area of the rectangle is ${ab}$ square units.",
    "Taking logarithms, $\\log_{{{a}}} {a}^{{{b}}} = {b}$, which we substitute back.",
)
_LATEX_PROSE = (
    "Let us solve the problem step by step.", "We first write down what is given.",
    "This is a standard exercise from an algebra course.", "Notice that the expression is symmetric.",
    "We check the result by substituting it back into the original equation.",
)


def latex_documents(n: int, seed: int = 0) -> list[str]:
    """Worked solutions mixing prose and inline LaTeX, 5-9 distinct sentences each (real solutions do
    not repeat a sentence template, and repetition is what Gopher's duplicate checks remove)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        templates = rng.sample(_LATEX_STEPS, rng.randint(3, 5)) + rng.sample(_LATEX_PROSE, rng.randint(2, 4))
        rng.shuffle(templates)
        sentences = []
        for template in templates:
            a, b, c = rng.randint(2, 9), rng.randint(1, 9), rng.randint(10, 60)
            values = {"a": a, "b": b, "c": c, "c_minus_b": c - b, "a2": a * a, "two_ab": 2 * a * b,
                      "b2": b * b, "ab": a * b}
            sentences.append(template.format(**values))
        sentences.append(f"The final answer is $\\boxed{{{rng.randint(1, 99)}}}$.")
        docs.append(" ".join(sentences))
    return docs


def stock_web_chain() -> list:
    """datatrove's FineWeb-style chain with stock settings (spaCy English word tokenizer)."""
    return [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter()]


def _run_chain(chain: list, texts: list[str]) -> tuple[int, float]:
    """(documents kept, CPU seconds) for running the chain's steps over the texts."""
    started = time.process_time()
    data = (Document(text=t, id=str(i)) for i, t in enumerate(texts))
    for step in chain:
        data = step.run(data, rank=0, world_size=1)
    kept = sum(1 for _ in data)
    return kept, time.process_time() - started


def bench_curation_throughput(n_docs: int = 400) -> dict:
    """docs/CPU-s of the math preset vs the stock spaCy chain, with keep rates per document type."""
    corpora = {
        "toy_mathweb": [d["text"] for d in ToyWorld().documents("mathweb", n_docs // 2, seed=11)],
        "latex": latex_documents(n_docs - n_docs // 2, seed=11),
    }
    chains = {"math_preset": lambda: list(build_filters("math").values()), "stock_spacy": stock_web_chain}
    for make in chains.values():  # warm-up: spaCy model construction is not per-document cost
        _run_chain(make(), corpora["latex"][:5])
    results = {}
    for name, make in chains.items():
        kept, cpu = {}, 0.0
        for kind, texts in corpora.items():
            kept[kind], seconds = _run_chain(make(), texts)
            cpu += seconds
        results[name] = {"docs_per_cpu_s": n_docs / cpu,
                         "keep_rate": {k: round(kept[k] / len(corpora[k]), 4) for k in corpora}}
    return {
        "ours": results["math_preset"]["docs_per_cpu_s"],
        "peer": results["stock_spacy"]["docs_per_cpu_s"],
        "unit": "docs/CPU-s",
        "peer_name": "datatrove stock Gopher+C4+FineWeb (spaCy)",
        "details": {
            "documents": n_docs,
            "keep_rate_math_preset": results["math_preset"]["keep_rate"],
            "keep_rate_stock": results["stock_spacy"]["keep_rate"],
        },
    }
