"""Corpus sources: the built-in toy world, local JSONL/Parquet files, HF datasets, and
question-answer files (GSM8K's format) rendered as worked or short-answer documents.

Each source becomes a datatrove reader. Local readers skip and count lines they cannot parse
(`corrupt_lines`: not UTF-8, not JSON) or that have no text (`missing_text`) instead of
failing, because one bad line in a multi-GB dump must not kill a curation run; a file whose
unreadable share exceeds MAX_BAD_LINE_SHARE fails it, naming the file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, Literal, Union

import orjson
from datatrove.pipeline.readers import HuggingFaceDatasetReader, JsonlReader, ParquetReader
from pydantic import BaseModel, ConfigDict, Field

from data_recipes.problems import split_gsm8k
from data_recipes.toyworld import CORPUS_KINDS, ToyWorld, ToyWorldConfig
from runfiles import replace_durably


class ToySource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["toy"] = "toy"
    kind: Literal[CORPUS_KINDS]  # type: ignore[valid-type]
    docs: int = Field(gt=0)
    seed: int = 0


class JsonlSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["jsonl"] = "jsonl"
    paths: list[str] = Field(min_length=1)  # files or globs (recursive ** allowed)
    text_field: str = "text"
    id_field: str = "id"


class ParquetSource(JsonlSource):
    type: Literal["parquet"] = "parquet"


class HFSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["hf"] = "hf"
    path: str  # a hub name, a builder such as "json" (with data_files), or a save_to_disk directory
    split: str = "train"
    name: str | None = None
    data_files: list[str] | None = None
    text_field: str = "text"
    id_field: str = "id"


class QASource(BaseModel):
    """Question-answer files in GSM8K's format (`question`; `answer`: worked steps, then `#### final`)
    as documents: `worked` keeps the steps (calculator annotations `<<48/2=24>>` removed) and ends
    with the final answer in `\\boxed{}`; `short` answers with the box alone. The same problems in
    both styles make two corpora that differ only in whether the work is shown. `prose`: the steps
    and "So the answer is N." with no box, for a template without the Q/A form (math text as the
    web has it); `boxless`: the worked steps ending "The final answer is N." without the box, a
    habit that costs every answer its format under a boxed reward."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["qa"] = "qa"
    paths: list[str] = Field(min_length=1)
    format: Literal["gsm8k"] = "gsm8k"
    style: Literal["worked", "short", "prose", "boxless"]
    template: str = Field(default="Question: {question}\nAnswer: {answer}",
                          description="the document; {question} and {answer} are replaced literally")

    def render(self, record: dict) -> str:
        steps, final = gsm8k_solution(record["answer"])
        answer = {"worked": f"{steps}\nThe final answer is \\boxed{{{final}}}.", "short": f"\\boxed{{{final}}}",
                  "prose": f"{' '.join(steps.splitlines())} So the answer is {final}.",
                  "boxless": f"{steps}\nThe final answer is {final}."}[self.style]
        return self.template.replace("{question}", record["question"].strip()).replace("{answer}", answer)


def gsm8k_solution(answer: str) -> tuple[str, str]:
    """(worked steps without calculator annotations, final answer without thousands separators)."""
    steps, final = split_gsm8k(answer)
    return re.sub(r"<<[^>]*>>", "", steps).strip(), final


Source = Union[ToySource, JsonlSource, ParquetSource, HFSource, QASource]


# A source file with a larger share of unreadable lines fails its curation: that is a wrong or
# broken file, not the odd bad line of a large dump.
MAX_BAD_LINE_SHARE = 0.05
READ_ERRORS = "read_errors"  # folder of per-file reports of unreadable lines, in the curation dir


class CountingJsonlReader(JsonlReader):
    """JsonlReader that skips unreadable lines (not UTF-8, not a JSON object) and text-less ones,
    counting both in its stats, and reports each file's unreadable lines (how many of how many,
    the first one's number) as `errors_dir/<hash>.json`."""

    def __init__(self, data_folder, errors_dir: str | None = None, **kwargs):
        super().__init__(data_folder, **kwargs)
        self.errors_dir = errors_dir

    def read_file(self, filepath: str):
        lines = bad = 0
        first_bad = None
        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            for line_no, line in enumerate(f):
                if not line.strip():
                    continue
                lines += 1
                with self.track_time():
                    try:
                        document = self.get_document_from_dict(orjson.loads(line.decode("utf-8")), filepath, line_no)
                    except (UnicodeDecodeError, orjson.JSONDecodeError, EOFError, TypeError, AttributeError):
                        self.stat_update("corrupt_lines")
                        bad += 1
                        first_bad = first_bad or line_no + 1
                        continue
                    if document is None:
                        self.stat_update("missing_text")
                        continue
                yield document
        if bad and self.errors_dir:
            report = {"file": self.data_folder.resolve_paths(filepath), "lines": lines, "bad_lines": bad,
                      "first_bad_line": first_bad}
            name = hashlib.sha256(filepath.encode()).hexdigest()[:16]
            Path(self.errors_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.errors_dir) / f"{name}.json").write_text(json.dumps(report))


def read_errors(errors_dir: Path) -> list[dict]:
    """The per-file reports of unreadable lines, worst share first; raises ValueError naming the
    first file over MAX_BAD_LINE_SHARE."""
    reports = [json.loads(p.read_text()) for p in sorted(Path(errors_dir).glob("*.json"))]
    reports.sort(key=lambda r: -r["bad_lines"] / r["lines"])
    for r in reports:
        if r["bad_lines"] / r["lines"] > MAX_BAD_LINE_SHARE:
            raise ValueError(f"{r['file']}: {r['bad_lines']} of {r['lines']} lines are unreadable "
                             f"(first: line {r['first_bad_line']}), more than the {MAX_BAD_LINE_SHARE:.0%} "
                             f"a source file may have")
    return reports


def expand_paths(patterns: list[str], corpus: str) -> list[str]:
    files = sorted({p for pattern in patterns for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                    if os.path.isfile(p)})
    if not files:
        raise ValueError(f"corpus '{corpus}': no files match {patterns}")
    return [os.path.abspath(p) for p in files]


def write_toy_documents(source: ToySource, toy_world: ToyWorldConfig | dict | None, folder: Path,
                        shards: int = 1) -> list[Path]:
    """Materialize toy documents as `shards` JSONL files of consecutive documents (one per datatrove
    task). Each file is written atomically, so a crash never leaves half a file to resume from."""
    paths = [folder / f"{i:05d}.jsonl" for i in range(shards)]
    if all(p.is_file() for p in paths):
        return paths
    world = ToyWorld(ToyWorldConfig.model_validate(toy_world or {}))
    folder.mkdir(parents=True, exist_ok=True)
    docs = world.documents(source.kind, source.docs, source.seed)
    for i, path in enumerate(paths):
        count = source.docs // shards + (i < source.docs % shards)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            for _ in range(count):
                f.write(orjson.dumps(next(docs)) + b"\n")
        replace_durably(tmp, path)
    return paths


def write_qa_documents(source: QASource, corpus: str, folder: Path) -> list[Path]:
    """Render every QA record of the source files as a document, one JSONL per source file (written
    atomically). A record that cannot be rendered is a bad input: the error names its file and line."""
    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for index, source_file in enumerate(expand_paths(source.paths, corpus)):
        path = folder / f"{index:05d}.jsonl"
        paths.append(path)
        if path.is_file():
            continue
        tmp = path.with_suffix(".tmp")
        with open(source_file, "rb") as lines, tmp.open("wb") as out:
            for line_no, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    text = source.render(orjson.loads(line))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"corpus '{corpus}': {source_file}:{line_no}: not a {source.format} "
                                     f"record ({exc})") from None
                out.write(orjson.dumps({"id": f"{Path(source_file).stem}:{line_no}", "text": text}) + b"\n")
        tmp.rename(path)
    return paths


def make_reader(source: Source, corpus: str, work_dir: Path, toy_world=None, tasks: int = 1):
    """The datatrove reader for `source`; toy and file sources are read through a paths file in work_dir."""
    if isinstance(source, HFSource):
        is_saved_dataset = Path(source.path).is_dir() and (Path(source.path) / "dataset_info.json").is_file()
        # cache_dir: `datasets` would otherwise prepare its Arrow cache under ~/.cache, outside work_dir.
        options = {"split": source.split, "name": source.name, "data_files": source.data_files,
                   "cache_dir": str(work_dir / "hf_cache")}
        return HuggingFaceDatasetReader(
            source.path, dataset_options={k: v for k, v in options.items() if v is not None and not is_saved_dataset},
            text_key=source.text_field, id_key=source.id_field, load_from_disk=is_saved_dataset,
        )
    if isinstance(source, ToySource):
        toy_files = write_toy_documents(source, toy_world, work_dir / "source", shards=min(tasks, source.docs))
        files, text_key, id_key = [str(p) for p in toy_files], "text", "id"
    elif isinstance(source, QASource):
        files, text_key, id_key = [str(p) for p in write_qa_documents(source, corpus, work_dir / "source")], "text", "id"
    else:
        files, text_key, id_key = expand_paths(source.paths, corpus), source.text_field, source.id_field
    # One common root plus a list of relative paths lets globs span several directories.
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    paths_file = work_dir / "source_paths.txt"
    paths_file.write_text("".join(os.path.relpath(f, root) + "\n" for f in files))
    options = dict(paths_file=str(paths_file), text_key=text_key, id_key=id_key)
    if isinstance(source, ParquetSource):
        return ParquetReader(root, **options)
    return CountingJsonlReader(root, errors_dir=str(work_dir / READ_ERRORS), **options)


def iter_source_texts(corpus, toy_world: ToyWorldConfig | dict | None = None) -> Iterator[str]:
    """Raw texts of a corpus's source, uncurated (for training a tokenizer before curation)."""
    source = corpus.source
    if isinstance(source, ToySource):
        world = ToyWorld(ToyWorldConfig.model_validate(toy_world or {}))
        yield from (doc["text"] for doc in world.documents(source.kind, source.docs, source.seed))
        return
    with tempfile.TemporaryDirectory() as work_dir:
        yield from (doc.text for doc in make_reader(source, "tokenizer", Path(work_dir)).run())
