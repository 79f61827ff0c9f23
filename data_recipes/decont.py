"""Benchmark decontamination that names what it matched: word n-grams for long items, the whole
item for items too short to have an n-gram.

datatrove's NGramsDecontIndexer loads lighteval tasks from the hub inside `run()` (no use
offline) and its index maps an n-gram to a task only. This index is built from local benchmark
JSONL with the indexer's own `compute_hashes` (query, answer and query-answer overlap n-grams,
datatrove's text normalisation and hash), and keeps which item each n-gram came from, so every
removed document can be listed with the benchmark item and the span that matched it.

A problem shorter than n words ("Simplify $\\sqrt{242}$.", 3 words) has no n-gram; it is
matched as a whole: its normalised words appearing consecutively in a document.

Eval files often wrap every item in the same prompt text (an instruction sentence before each
problem, a formatting reminder after it). That text is not the item: indexed with it, a short
problem became a long "item" whose every n-gram spans the instruction, so the bare problem copied
into a document matched nothing, and n-grams of the instruction alone would remove clean documents
that quote it. So each file's shared text is found first — every word covered by a word
SHARED_GRAM_WORDS-gram that at least SHARED_SHARE of the file's items contain (and at least two) —
and each item is indexed by the runs of its own words between (its n-grams; each run matched whole
when none is n words long). Shared text shorter than SHARED_GRAM_WORDS words ("Question:", "What
is") is kept: it cannot be told from the items' own phrasing. An item with fewer than
MIN_WHOLE_ITEM_WORDS words of its own (a file of near-identical items) is indexed whole, as before.
Normalisation: Asymptote figure code and LaTeX spacing and sizing commands dropped (`\\,`, `\\!`,
`\\left`, `\\dfrac` -> `\\frac`), then datatrove's (lowercase, punctuation to spaces, whitespace collapsed; numbers kept,
since with them normalised every arithmetic problem of one template would collide).
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import re
from pathlib import Path

import numpy as np
import orjson
from datatrove.data import Document
from datatrove.pipeline.decont import NGramsDecontConfig
from datatrove.pipeline.decont.n_grams import NGramsDecontIndexer
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.text import TextNormConfig, ngrams, simplify_text

from data_recipes.words import RegexWordTokenizer

QUESTION_FIELDS = ("question", "problem", "prompt", "query")
ANSWER_FIELDS = ("answer", "solution", "gold", "target")
MIN_WHOLE_ITEM_WORDS = 3  # shorter items ("Factor $x^2$") would match ordinary text
SHARED_GRAM_WORDS = 4  # 3-grams such as "what is the" are in a third of MATH's problems
SHARED_SHARE = 0.5  # no 4-gram is in more than 6% of GSM8K's or MATH's train problems
_LATEX_SPACING = re.compile(r"\\[!,;: ]|\\left\b|\\right\b|\\displaystyle\b|\{,\}")
_LATEX_FRAC = re.compile(r"\\[dt]frac\b")
# Asymptote figure code is drawing boilerplate shared across problems ("pen dps=linewidth(0.7)+
# fontsize(10)"), not problem text: it made most of MATH train's n-gram matches between problems.
_ASY = re.compile(r"\[asy\].*?(?:\[/asy\]|$)", re.DOTALL)  # an unterminated one: to the end
_NORM = TextNormConfig(norm_numbers=False)


def decont_config(n_grams: int) -> NGramsDecontConfig:
    # Query n-grams on: math benchmarks are mostly question text (datatrove's default found 0 of 40
    # question-only leaks).
    return NGramsDecontConfig(n_grams=n_grams, find_query_ngrams=True, find_overlap_ngrams=True, norm_config=_NORM)


def normalize(text: str) -> str:
    text = _ASY.sub(" ", text.lower())  # lowercase first: the LaTeX patterns are lowercase
    return simplify_text(_LATEX_FRAC.sub(r"\\frac", _LATEX_SPACING.sub(" ", text)), _NORM)


class _Hasher:
    """NGramsDecontIndexer.compute_hashes; it simplifies text again, which normalize()d text survives."""

    def __init__(self, config: NGramsDecontConfig):
        self.config = config
        self.tokenizer = RegexWordTokenizer()
        self.hash_func = create_hash_func(config.hash_config)

    compute_hashes = NGramsDecontIndexer.compute_hashes


def read_benchmark(path: Path) -> list[dict]:
    """Items of one benchmark JSONL: `question` (or problem/prompt/query), `answer` (or ...)."""
    items = []
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = orjson.loads(line)
            question = next((str(record[k]) for k in QUESTION_FIELDS if record.get(k)), None)
            if question is None:
                raise ValueError(f"{path}:{line_no}: benchmark record has none of the fields {QUESTION_FIELDS}")
            answer = next((str(record[k]) for k in ANSWER_FIELDS if record.get(k) is not None), "")
            items.append({"line": line_no, "id": str(record.get("id", line_no)), "question": question, "answer": answer})
    return items


def benchmark_names(benchmarks: list[Path]) -> dict[str, Path]:
    """Task name per benchmark file: its stem, prefixed by its folder when two stems collide."""
    stems = [Path(p).stem for p in benchmarks]
    names = {}
    for path, stem in zip(benchmarks, stems):
        name = stem if stems.count(stem) == 1 else f"{Path(path).parent.name}_{stem}"
        names[re.sub(r"[^\w.-]", "_", name)] = Path(path)
    return names


def own_runs(items_words: list[list[str]]) -> tuple[list[list[list[str]]], dict[str, int]]:
    """Per item (its normalised words), the runs of its own words once the text shared by the
    file's items is left out; and the shared runs, with how many items have each."""
    k = SHARED_GRAM_WORDS
    in_items = collections.Counter(g for w in items_words for g in {tuple(w[i:i + k]) for i in range(len(w) - k + 1)})
    least = max(2, math.ceil(SHARED_SHARE * len(items_words)))
    frequent = {g for g, count in in_items.items() if count >= least}
    runs, shared = [], collections.Counter()
    for w in items_words:
        is_shared = [False] * len(w)
        for i in range(len(w) - k + 1):
            if tuple(w[i:i + k]) in frequent:
                is_shared[i:i + k] = [True] * k
        own = [[w[i] for i in idx] for s, idx in _runs(is_shared) if not s]
        shared.update({" ".join(w[i] for i in idx) for s, idx in _runs(is_shared) if s})
        runs.append(own if sum(map(len, own)) >= MIN_WHOLE_ITEM_WORDS else [w])
    return runs, dict(shared.most_common())


def _runs(flags: list[bool]) -> list[tuple[bool, list[int]]]:
    """Maximal runs of equal flags: (flag, indices); one empty own run for no flags."""
    out: list[tuple[bool, list[int]]] = []
    for i, flag in enumerate(flags):
        if out and out[-1][0] == flag:
            out[-1][1].append(i)
        else:
            out.append((flag, [i]))
    return out or [(False, [])]


def write_index(benchmarks: list[Path], n_grams: int, out_dir: Path) -> dict[str, int]:
    """`items.jsonl`, `ngrams.npy` (hash, item row), `whole.json` (short items' words) and, when a
    file wraps its items in shared text, `shared_text.json` (per task, the text left out and how
    many items have it) in out_dir; returns task name -> number of items."""
    hasher = _Hasher(decont_config(n_grams))
    words = RegexWordTokenizer()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, hashes, owners, whole, counts, shared = [], [], [], {}, {}, {}
    for task, path in benchmark_names(benchmarks).items():
        items = read_benchmark(path)
        counts[task] = len(items)
        question_words = [words.word_tokenize(normalize(item["question"])) for item in items]
        runs, shared[task] = own_runs(question_words)
        for item, item_runs in zip(items, runs):
            row = len(rows)
            rows.append({"task": task, "id": item["id"], "line": item["line"], "question": item["question"]})
            *first_runs, last_run = map(" ".join, item_runs)
            # the last run with the answer: its n-grams, the answer's and those spanning both
            item_hashes = hasher.compute_hashes(normalize(item["answer"]), last_run)
            item_hashes += [h for run in first_runs for h in hasher.compute_hashes(run)]
            hashes += item_hashes
            owners += [row] * len(item_hashes)
            if all(len(run) < n_grams for run in item_runs):
                for run in item_runs:
                    if len(run) >= MIN_WHOLE_ITEM_WORDS:
                        whole.setdefault(" ".join(run), row)
    with open(out_dir / "items.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    np.save(out_dir / "ngrams.npy", np.array([hashes, owners], dtype=np.uint64).T.reshape(-1, 2))
    (out_dir / "whole.json").write_text(json.dumps({"n_grams": n_grams, "items": whole}))
    shared = {task: texts for task, texts in shared.items() if texts}
    if shared:  # only for wrapped files: an unwrapped file's index is what it always was
        (out_dir / "shared_text.json").write_text(json.dumps(shared, indent=1) + "\n")
    return counts


class BenchmarkDecontFilter(BaseFilter):
    """Drops documents that contain a benchmark item's n-gram or a whole short item; the dropped
    document's metadata says which (`contamination`: task, item id, question, matched span)."""

    name = "💥 Benchmark decontamination"

    def __init__(self, index_dir: str | Path, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.index_dir = Path(index_dir)
        self._index = None

    def _load(self):
        whole = json.loads((self.index_dir / "whole.json").read_text())
        n_grams = whole["n_grams"]
        pairs = np.load(self.index_dir / "ngrams.npy")
        with open(self.index_dir / "items.jsonl") as f:
            items = [json.loads(line) for line in f]
        by_length: dict[int, dict[str, int]] = {}
        for text, row in whole["items"].items():
            by_length.setdefault(text.count(" ") + 1, {})[text] = row
        hash_owner = dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist()))
        self._index = (n_grams, hash_owner, by_length, items, create_hash_func(decont_config(n_grams).hash_config))

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._index is None:
            self._load()
        n_grams, hash_owner, by_length, items, hash_func = self._index
        words = RegexWordTokenizer().word_tokenize(normalize(doc.text))
        match = next(((hash_owner[h], gram) for gram in map(" ".join, ngrams(words, n_grams))
                      if (h := hash_func(gram)) in hash_owner), None)
        for length, texts in by_length.items():
            if match is not None:
                break
            match = next(((texts[g], g) for g in map(" ".join, ngrams(words, length)) if g in texts), None)
        if match is None:
            return True
        item = items[match[0]]
        doc.metadata["contamination"] = {"task": item["task"], "item": item["id"], "question": item["question"],
                                         "matched": match[1]}
        self.stat_update(f"contaminated_{item['task']}")
        return False, "contaminated"


def contamination_report(excluded_dir: Path, out_path: Path) -> int:
    """One JSON line per removed document (id, task, item, question, matched span, the text's start)
    from the decontamination step's exclusion files; returns the number of lines."""
    rows = []
    for path in sorted(excluded_dir.glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            for line in f:
                doc = json.loads(line)
                rows.append({"doc_id": doc["id"], **doc["metadata"]["contamination"], "text": doc["text"][:500]})
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    tmp.rename(out_path)
    return len(rows)
