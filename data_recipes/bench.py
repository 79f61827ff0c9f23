"""Curation benchmark: the math preset vs datatrove's stock spaCy web chain on real math text.

Both chains run as datatrove pipeline steps in this process on the same documents, drawn evenly
from the bundled train splits (data/README.md): GSM8K questions, GSM8K question+solution and
MATH question+solution documents. Reported: documents per CPU-second over the whole chain and
the share of each kind that each chain keeps, and the share of the general-web sample
(data/web/README.md) that the math preset rejects.
"""

from __future__ import annotations

import time

from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter

from data_recipes.calibration import general_web, gsm8k_train, math_train, real_math_documents, rejection, run_chain
from data_recipes.filters import build_filters


def stock_web_chain() -> list:
    """datatrove's FineWeb-style chain with stock settings (spaCy English word tokenizer)."""
    return [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter()]


def _run_chain(chain: list, texts: list[str]) -> tuple[int, float]:
    """(documents kept, CPU seconds) for running the chain's steps over the texts."""
    started = time.process_time()
    kept = run_chain(chain, texts)
    return kept, time.process_time() - started


def bench_curation_throughput(n_docs: int = 600) -> dict:
    """docs/CPU-s of the math preset vs the stock spaCy chain, with keep rates per kind of real math
    and the share of the general-web sample (not math) that the math preset rejects."""
    per_kind = max(1, n_docs // 3)
    every = max(1, min(len(gsm8k_train()), len(math_train())) // per_kind)
    corpora = {kind: texts[:per_kind] for kind, texts in real_math_documents(every).items()}
    chains = {"math_preset": lambda: list(build_filters("math").values()), "stock_spacy": stock_web_chain}
    for make in chains.values():  # warm-up: spaCy model construction is not per-document cost
        _run_chain(make(), corpora["math_question_solution"][:5])
    results = {}
    for name, make in chains.items():
        kept, cpu = {}, 0.0
        for kind, texts in corpora.items():
            kept[kind], seconds = _run_chain(make(), texts)
            cpu += seconds
        results[name] = {"docs_per_cpu_s": sum(map(len, corpora.values())) / cpu,
                         "keep_rate": {k: round(kept[k] / len(corpora[k]), 4) for k in corpora}}
    return {
        "ours": results["math_preset"]["docs_per_cpu_s"],
        "peer": results["stock_spacy"]["docs_per_cpu_s"],
        "unit": "docs/CPU-s",
        "peer_name": "datatrove stock Gopher+C4+FineWeb (spaCy)",
        "details": {
            "documents": sum(map(len, corpora.values())),
            "data": "GSM8K train, MATH train (data/README.md); general web (data/web/README.md)",
            "keep_rate_math_preset": results["math_preset"]["keep_rate"],
            "keep_rate_stock": results["stock_spacy"]["keep_rate"],
            "general_web_rejected_math_preset": rejection([p["text"] for p in general_web()], "math"),
        },
    }
