"""Curate one corpus with datatrove: read → filter preset → dedup (MinHash or exact) → n-gram
decontamination → Megatron tokenization, all inside `out_dir`.

Layout of out_dir (every stage resumes from datatrove's completion markers):
    source/, source_paths.txt   toy documents (one JSONL per task) / the list of input files
    filtered/        documents kept by the filter preset (JSONL)
    minhash/, exact/ duplicate signatures and the per-rank lists of documents to drop
    decont_index/    benchmark items, their n-gram hashes, the short items matched whole
    curated/         the final documents (JSONL), exactly what was tokenized
    megatron/        `<rank>_tokens.bin/.idx`, every document between BOS (when the tokenizer adds one) and EOS
    excluded/<step>/ dropped documents with their reason, for auditing
    logs/<stage>/    datatrove logging dirs: per-task stats, completions, task logs
    curation.json    prefixes, shard counts, docs_in/out, dropped by step and reason,
                     contaminated per benchmark, tokens
    decontamination.jsonl  one line per removed document: benchmark item, matched span
"""

from __future__ import annotations

import inspect
import json
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import MegatronDocumentTokenizer
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.stats import PipelineStats
from datatrove.utils.text import TextNormConfig
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from data_recipes.decont import BenchmarkDecontFilter, contamination_report, write_index
from data_recipes.filters import FILTER_BLOCKS, build_filters
from data_recipes.sources import READ_ERRORS, Source, ToySource, iter_source_texts, make_reader, read_errors
from data_recipes.tokenizer import document_post_processor
from data_recipes.words import RegexWordTokenizer
from runfiles import atomic_write

__all__ = ["CorpusConfig", "CurationConfig", "ExecutorConfig", "curate_corpus", "iter_source_texts"]


# Toy corpora are curated with the preset written for their kind; boxed_repeat is the
# deliberately pathological corpus, so no quality filter may remove it.
TOY_PRESETS = {"web": "web", "mathweb": "math", "qa_short": "qa", "qa_cot": "qa", "boxed_repeat": "none"}


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # minhash: near-duplicates (Jaccard of word 5-grams, ~0.75 threshold with 14x8 hashes).
    # exact: identical text up to whitespace only; for short templated corpora (toy QA), where
    # distinct problems one word apart can reach MinHash's threshold.
    method: Literal["minhash", "exact", "none"] = "minhash"
    n_grams: int = 5
    num_buckets: int = 14
    hashes_per_bucket: int = 8


class DecontaminationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    # 13 words (GPT-3's choice; the field uses 8-13): a first half of 13 words still matches,
    # items shorter than n are matched whole, and fewer near-duplicate train problems are lost
    # than at 8 or 10 (docs/results/2026-11-27-decontamination.md).
    n_grams: int = Field(13, ge=3)


class CurationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: Literal["auto", "web", "math", "qa", "none"] = "auto"
    filters: dict[str, dict[str, Any] | None] = Field(default_factory=dict)  # per-corpus filter overrides
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)

    @field_validator("filters")
    @classmethod
    def _known_filters_and_arguments(cls, filters: dict) -> dict:
        """Fail at sweep validation, not hours later inside a curation job."""
        for name, kwargs in filters.items():
            if name not in FILTER_BLOCKS:
                raise ValueError(f"unknown filter '{name}' (known: {', '.join(sorted(FILTER_BLOCKS))})")
            accepted = inspect.signature(FILTER_BLOCKS[name].__init__).parameters
            unknown = sorted(set(kwargs or {}) - set(accepted))
            if unknown:
                raise ValueError(f"filter '{name}' has no argument(s) {unknown}")
        return filters


class CorpusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Source = Field(discriminator="type")
    curation: CurationConfig = Field(default_factory=CurationConfig)

    @model_validator(mode="after")
    def _toy_decontamination_n_grams(self):
        # Toy questions are templated and at least 14 words long: at 14 every probe/eval question
        # still matches, and partial overlaps between templates stay rare (<0.3% of QA docs;
        # 12-grams flag ~5%).
        if isinstance(self.source, ToySource) and "n_grams" not in self.curation.decontamination.model_fields_set:
            self.curation.decontamination.n_grams = 14
        return self

    def preset(self) -> str:
        if self.curation.preset != "auto":
            return self.curation.preset
        return TOY_PRESETS[self.source.kind] if isinstance(self.source, ToySource) else "web"


class ExecutorConfig(BaseModel):
    """Where datatrove runs. slurm / ray options are passed to SlurmPipelineExecutor / RayPipelineExecutor."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["local", "slurm", "ray"] = "local"
    tasks: int = Field(1, ge=1)
    workers: int = Field(1, ge=1)
    slurm: dict[str, Any] = Field(default_factory=dict)  # partition, time, cpus_per_task, sbatch_args, ...
    ray: dict[str, Any] = Field(default_factory=dict)  # cpus_per_task, mem_per_cpu_gb, ...
    ray_address: str = "local"  # "local" starts a private Ray; "auto" joins a running cluster
    poll_seconds: float = 30.0  # how often to check on submitted Slurm jobs

    @model_validator(mode="after")
    def _slurm_needs_partition_and_time(self):
        missing = [key for key in ("partition", "time") if self.type == "slurm" and key not in self.slurm]
        if missing:
            raise ValueError(f"slurm executor needs slurm.{' and slurm.'.join(missing)} (passed to sbatch)")
        return self


class _StageRunner:
    """Runs one datatrove pipeline per stage on the configured executor and returns its merged stats."""

    def __init__(self, cfg: ExecutorConfig, logs_dir: Path, corpus: str):
        self.cfg, self.logs_dir, self.corpus = cfg, logs_dir, corpus
        self.seconds: dict[str, float] = {}

    def run(self, stage: str, pipeline: list, tasks: int) -> PipelineStats:
        logging_dir = str(self.logs_dir / stage)
        started = time.monotonic()
        if self.cfg.type == "local":
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(self.cfg.workers, tasks),
                                  logging_dir=logging_dir, skip_completed=True).run()
        elif self.cfg.type == "ray":
            import ray
            from datatrove.executor import RayPipelineExecutor

            if not ray.is_initialized():
                ray.init(address=self.cfg.ray_address, include_dashboard=False)
            RayPipelineExecutor(pipeline, tasks=tasks, workers=min(self.cfg.workers, tasks),
                                logging_dir=logging_dir, skip_completed=True, **self.cfg.ray).run()
        else:
            from datatrove.executor import SlurmPipelineExecutor

            executor = SlurmPipelineExecutor(pipeline, tasks=tasks, logging_dir=logging_dir, skip_completed=True,
                                             job_name=f"curate-{self.corpus}-{stage}", **self.cfg.slurm)
            executor.run()
            self._wait_for_slurm(executor, logging_dir)
        self.seconds[stage] = round(time.monotonic() - started, 3)
        return merged_stats(Path(logging_dir))

    def _wait_for_slurm(self, executor, logging_dir: str) -> None:
        """Block until every task has its completion marker; fail if the job left the queue without them."""
        while executor.get_incomplete_ranks():
            time.sleep(self.cfg.poll_seconds)
            queue = subprocess.run(["squeue", "-h", "-j", str(executor.job_id)], capture_output=True, text=True)
            if not queue.stdout.strip() and (missing := executor.get_incomplete_ranks()):
                raise RuntimeError(f"corpus '{self.corpus}': Slurm job {executor.job_id} ended with {len(missing)} "
                                   f"unfinished tasks (logs in {logging_dir}/logs); rerun to resume them")


def merged_stats(logging_dir: Path) -> PipelineStats:
    """Sum of per-task stats files: after a resume, datatrove's own stats.json covers only re-run tasks."""
    total = PipelineStats()
    for path in sorted((logging_dir / "stats").glob("*.json")):
        total += PipelineStats.from_json(json.loads(path.read_text()))
    return total


def _counts(stats) -> dict[str, int]:
    # Stats JSON round-trips plain counters as ints, per-file counters as dicts, the rest as MetricStats.
    def total(value):
        return value["total"] if isinstance(value, dict) else getattr(value, "total", value)

    return {key: int(total(value)) for key, value in stats.stats.items()}


def _idx_counts(idx_path: Path) -> tuple[int, int]:
    """(documents, tokens) from a Megatron MMIDIDX index header, without importing megatron/torch."""
    with idx_path.open("rb") as f:
        f.seek(9 + 8 + 1)  # magic, version, dtype code
        sequences, _ = struct.unpack("<QQ", f.read(16))
        lengths = np.frombuffer(f.read(4 * sequences), dtype=np.int32)
    return int(sequences), int(lengths.sum())


def curate_corpus(
    corpus: CorpusConfig,
    tokenizer_dir: str | Path | None,
    decontaminate_against: list[Path],
    out_dir: str | Path,
    executor: ExecutorConfig | None = None,
    name: str | None = None,
    toy_world=None,
) -> dict:
    """Run the curation pipeline for one corpus; write and return `out_dir/curation.json`.

    Without a tokenizer (`midprobe curate` without --tokenizer) the curated JSONL is the end
    product: nothing is tokenized and `curation.json` has no shards. `toy_world` (a ToyWorldConfig
    or dict) is only used by toy sources. Raises ValueError naming the corpus and the step when
    the corpus ends empty.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    executor = executor or ExecutorConfig()
    name = name or (corpus.source.kind if isinstance(corpus.source, ToySource) else out_dir.name)
    tokenizer_json = None if tokenizer_dir is None else Path(tokenizer_dir).resolve() / "tokenizer.json"
    if tokenizer_json is not None and not tokenizer_json.is_file():
        raise ValueError(f"corpus '{name}': no tokenizer.json in {tokenizer_dir}")
    cur = corpus.curation
    preset = corpus.preset()
    # One instance pickled into every task, so that MinHash splits words the same way everywhere.
    ngram_words = RegexWordTokenizer()
    runner = _StageRunner(executor, out_dir / "logs", name)
    tasks = executor.tasks

    # 1. read + quality filters
    filters = build_filters(preset, cur.filters)
    for key, block in filters.items():
        block.exclusion_writer = JsonlWriter(str(out_dir / "excluded" / key))
    reader = make_reader(corpus.source, name, out_dir, toy_world, tasks)
    stats = runner.run("filter", [reader, *filters.values(), JsonlWriter(str(out_dir / "filtered"))], tasks)
    read_counts = _counts(stats.stats[0])
    try:
        bad_files = read_errors(out_dir / READ_ERRORS)
    except ValueError as exc:
        raise ValueError(f"corpus '{name}': {exc}") from None
    docs_in = read_counts.get("documents", 0)
    steps = [(key, _counts(s)) for key, s in zip(filters, stats.stats[1:])]
    if docs_in == 0:
        field = f" text field '{corpus.source.text_field}'," if hasattr(corpus.source, "text_field") else ""
        raise ValueError(f"corpus '{name}': the source produced no documents ({field} "
                         f"{read_counts.get('corrupt_lines', 0)} corrupt lines, "
                         f"{read_counts.get('missing_text', 0)} lines without text)")
    _fail_if_emptied(name, docs_in, steps)

    # 2. duplicate detection; the removal happens in the last stage, which re-reads filtered/
    final_steps: list[tuple[str, Any]] = [("read_filtered", JsonlReader(str(out_dir / "filtered")))]
    if cur.dedup.method == "minhash":
        final_steps.append(("minhash_dedup", _find_minhash_duplicates(runner, cur.dedup, out_dir, ngram_words, tasks)))
    elif cur.dedup.method == "exact":
        final_steps.append(("exact_dedup", _find_exact_duplicates(runner, out_dir, tasks)))

    # 3. decontamination against the probe/eval/benchmark sets: n-grams, short items whole
    index_sizes: dict[str, int] = {}
    if cur.decontamination.enabled and decontaminate_against:
        index_sizes = write_index([Path(p) for p in decontaminate_against], cur.decontamination.n_grams,
                                  out_dir / "decont_index")
        final_steps.append(("decontamination", BenchmarkDecontFilter(
            out_dir / "decont_index", JsonlWriter(str(out_dir / "excluded" / "decontamination")))))

    # 4. the curated documents, then Megatron .bin/.idx: each document between the tokenizer's BOS
    # (when it adds one) and its EOS
    final_steps.append(("write_curated", JsonlWriter(str(out_dir / "curated"))))
    if tokenizer_json is not None:
        tokenize = MegatronDocumentTokenizer(str(out_dir / "megatron"), tokenizer_name_or_path=str(tokenizer_json))
        tokenize.post_processor = document_post_processor(tokenizer_json.parent)
        final_steps.append(("tokenize", tokenize))
    stats = runner.run("dedup_decont_tokenize", [step for _, step in final_steps], tasks)
    final_counts = [(key, _counts(s)) for (key, _), s in zip(final_steps, stats.stats)]
    removal_steps = [(k, c) for k, c in final_counts if k in ("minhash_dedup", "exact_dedup", "decontamination")]
    steps += removal_steps
    _fail_if_emptied(name, docs_in, steps)

    shards = []
    for idx in sorted((out_dir / "megatron").glob("*.idx")):
        documents, tokens = _idx_counts(idx)
        if documents:
            shards.append({"prefix": str(idx.with_suffix("").relative_to(out_dir)), "documents": documents,
                           "tokens": tokens})
    summary = {
        "corpus": name,
        "source": corpus.source.model_dump(),
        "preset": preset,
        "curation": cur.model_dump(),
        "prefixes": [s["prefix"] for s in shards],
        "shards": shards,
        "docs_in": docs_in,
        # every step forwards or drops each document
        "docs_out": docs_in - sum(c.get("dropped", 0) for _, c in steps),
        "tokens": sum(s["tokens"] for s in shards),
        "corrupt_lines": read_counts.get("corrupt_lines", 0),
        "missing_text": read_counts.get("missing_text", 0),
        "bad_lines_by_file": bad_files,  # each: file, lines, bad_lines, first_bad_line
        "dropped": {key: {"total": c.get("dropped", 0),
                          **{k.removeprefix("dropped_"): v for k, v in c.items() if k.startswith("dropped_")}}
                    for key, c in steps},
        "contaminated": {task: dict(final_counts).get("decontamination", {}).get(f"contaminated_{task}", 0)
                         for task in index_sizes},
        # one line per removed document: benchmark item and the matched span, for a user to judge
        "contamination_report": "decontamination.jsonl" if index_sizes else None,
        "decontamination_index": index_sizes,
        "seconds": runner.seconds,
    }
    if index_sizes:
        contamination_report(out_dir / "excluded" / "decontamination", out_dir / "decontamination.jsonl")
    atomic_write(out_dir / "curation.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _find_minhash_duplicates(runner: _StageRunner, dedup: DedupConfig, out_dir: Path, words, tasks: int):
    """Signatures -> buckets -> clusters; returns the filter that drops all but one per cluster."""
    config = MinhashConfig(n_grams=dedup.n_grams, num_buckets=dedup.num_buckets,
                           hashes_per_bucket=dedup.hashes_per_bucket,
                           # Keep numbers: "7 + 5 = 12" and "7 + 6 = 13" are different documents.
                           norm_config=TextNormConfig(norm_numbers=False))
    mh = out_dir / "minhash"
    runner.run("minhash_signatures", [JsonlReader(str(out_dir / "filtered")),
                                      MinhashDedupSignature(str(mh / "signatures"), config, words)], tasks)
    runner.run("minhash_buckets", [MinhashDedupBuckets(str(mh / "signatures"), str(mh / "buckets"), config=config)],
               dedup.num_buckets)
    runner.run("minhash_clusters", [MinhashDedupCluster(str(mh / "buckets"), str(mh / "remove"), config)], 1)
    return MinhashDedupFilter(str(mh / "remove"), exclusion_writer=JsonlWriter(str(out_dir / "excluded" / "minhash_dedup")))


def whitespace_normalized_text(doc: Document) -> str:
    return " ".join(doc.text.split())


def _find_exact_duplicates(runner: _StageRunner, out_dir: Path, tasks: int):
    """Content hashes -> duplicate lists; returns the filter that keeps the first of each group."""
    config = ExactDedupConfig(content_getter=whitespace_normalized_text)
    ex = out_dir / "exact"
    runner.run("exact_signatures", [JsonlReader(str(out_dir / "filtered")),
                                    ExactDedupSignature(str(ex / "signatures"), config)], tasks)
    runner.run("exact_duplicates", [ExactFindDedups(str(ex / "signatures"), str(ex / "duplicates"), config)], 1)
    return ExactDedupFilter(str(ex / "duplicates"), config, JsonlWriter(str(out_dir / "excluded" / "exact_dedup")))


def _fail_if_emptied(name: str, docs_in: int, steps: list[tuple[str, dict]]) -> None:
    for key, counts in steps:
        if counts.get("total", 0) > 0 and counts.get("forwarded", 0) == 0:
            reasons = {k.removeprefix("dropped_"): v for k, v in counts.items() if k.startswith("dropped_")}
            raise ValueError(
                f"corpus '{name}' is empty after curation: step '{key}' dropped all {counts['total']} remaining "
                f"documents (of {docs_in} read; reasons {reasons or 'n/a'}); loosen it with "
                f"curation.filters.{key}, disable it, or use curation preset 'none'")
