"""Offline n-gram decontamination index for datatrove's NGramsDecontFilter.

datatrove's NGramsDecontIndexer always loads lighteval tasks from the hub inside `run()`,
which cannot work offline; its filter only needs `<task>.index.hashes` files. This module
writes those files from local benchmark JSONL, hashing with the indexer's own
`compute_hashes` so the filter sees exactly the n-grams datatrove would have produced.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
from datatrove.pipeline.decont import NGramsDecontConfig
from datatrove.pipeline.decont.n_grams import NGramsDecontIndexer
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.text import TextNormConfig
from datatrove.utils.word_tokenizers import WordTokenizer

QUESTION_FIELDS = ("question", "problem", "prompt", "query")
ANSWER_FIELDS = ("answer", "solution", "gold", "target")


def decont_config(n_grams: int) -> NGramsDecontConfig:
    # Query n-grams on: math benchmarks are mostly question text (datatrove's default found 0 of 40
    # question-only leaks). Numbers are kept: with datatrove's default number normalization every
    # arithmetic problem of one template would collide.
    return NGramsDecontConfig(n_grams=n_grams, find_query_ngrams=True, find_overlap_ngrams=True,
                              norm_config=TextNormConfig(norm_numbers=False))


class LocalNGramsIndexer:
    """Builds `<task>.index.hashes` from local JSONL with NGramsDecontIndexer.compute_hashes."""

    compute_hashes = NGramsDecontIndexer.compute_hashes

    def __init__(self, config: NGramsDecontConfig, tokenizer: WordTokenizer):
        self.config = config
        self.tokenizer = tokenizer
        self.hash_func = create_hash_func(config.hash_config)

    def index_file(self, path: Path) -> set[int]:
        hashes: set[int] = set()
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                record = orjson.loads(line)
                query = next((str(record[k]) for k in QUESTION_FIELDS if record.get(k)), None)
                label = next((str(record[k]) for k in ANSWER_FIELDS if record.get(k) is not None), "")
                if query is None:
                    raise ValueError(f"{path}:{line_no}: benchmark record has none of the fields {QUESTION_FIELDS}")
                hashes.update(self.compute_hashes(label, query))
        return hashes

    def write_index(self, benchmarks: list[Path], out_dir: Path) -> dict[str, int]:
        """One hash file per benchmark, named after it; returns task name -> number of n-gram hashes."""
        out_dir.mkdir(parents=True, exist_ok=True)
        counts = {}
        for task, path in benchmark_names(benchmarks).items():
            hashes = np.array(sorted(self.index_file(path)), dtype=self.config.hash_config.np_descr)
            hashes.tofile(out_dir / f"{task}.index.hashes")
            counts[task] = int(hashes.size)
        return counts


def benchmark_names(benchmarks: list[Path]) -> dict[str, Path]:
    """Task name per benchmark file: its stem, prefixed by its folder when two stems collide."""
    stems = [Path(p).stem for p in benchmarks]
    names = {}
    for path, stem in zip(benchmarks, stems):
        name = stem if stems.count(stem) == 1 else f"{Path(path).parent.name}_{stem}"
        names[re.sub(r"[^\w.-]", "_", name)] = Path(path)
    return names

