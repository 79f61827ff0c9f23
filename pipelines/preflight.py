"""Preflight: everything about a sweep that can be checked without training, checked first.

`validate`, `run`, `plan`, `probe` and `report` call these before any stage starts and before
anything is written, so a typo or a broken file costs seconds instead of the upstream stages:
source files exist and parse with their text field, problem sets read as problems,
the base is an architecture midprobe trains and its embedding fits the tokenizer, budgets
buy at least one optimizer step, names are safe path components, the workspace can be written.
Each problem is one line ``<field.path or file>: <what is wrong>``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sqlite3
import tempfile
from pathlib import Path

import fsspec
from pydantic import ValidationError
from tokenizers import Tokenizer

from data_recipes.filters import FILTER_BLOCKS, FILTER_FILE_ARGUMENTS
from data_recipes.problems import ProblemFormatError, has_levels, read_problem_set
from data_recipes.sources import JsonlSource, ParquetSource, QASource
from midtrain.spec import ModelSpec
from pipelines.calibration import calibration_errors
from pipelines.errors import InputError
from pipelines.sweep import DEVICE_PATTERN, ExecutorSection, Sweep, cross_check, parse_sweep, resolve_path

SAMPLE_LINES = 100  # of each source file: enough to find a wrong text field, cheap on a large corpus
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a path component, never '.' or '..'


def check_sweep(sweep: Sweep, source: Path) -> list[str]:
    """Every data-level problem of a schema-valid sweep."""
    errors = _names(sweep)
    errors += _sources(sweep, source.parent)
    errors += _filter_files(sweep, source.parent)
    errors += _problem_sets(sweep, source.parent)
    errors += _base(sweep, source.parent)
    errors += _budgets(sweep)
    if sweep.probe.calibration:
        errors += calibration_errors(resolve_path(sweep.probe.calibration, source.parent))
    errors += device_errors(sweep.probe.device, "probe.device")
    return errors


def safe_name(name: str, field: str) -> list[str]:
    if SAFE_NAME.match(name):
        return []
    return [f"{field}: '{name}' is not a safe name (letters, digits, '_', '.', '-'; not starting with '.')"]


def device_errors(device: str, field: str) -> list[str]:
    """A device the embedded engine can run on here: cpu, or cuda[:N] where torch sees that GPU."""
    if not re.match(DEVICE_PATTERN, device):
        return [f"{field}: '{device}' is not a device (cpu, cuda or cuda:N)"]
    if device == "cpu":
        return []
    import torch

    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        return [f"{field}: '{device}': torch sees {torch.cuda.device_count()} CUDA device(s) here"]
    return []


def _names(sweep: Sweep) -> list[str]:
    errors = safe_name(sweep.name, "name")
    for section, names in (("corpora", sweep.corpora), ("recipes", sweep.recipes)):
        for name in names:
            errors += safe_name(name, f"{section}.{name}")
    return errors


def _sources(sweep: Sweep, here: Path) -> list[str]:
    """Source files exist and parse; paths are relative to the sweep file (as the plan reads them)."""
    errors = []
    for name, corpus in sweep.corpora.items():
        source = corpus.source
        if not isinstance(source, (JsonlSource, QASource)):  # ParquetSource is a JsonlSource too
            continue
        for i, pattern in enumerate(source.paths):
            field = f"corpora.{name}.source.paths.{i}"
            files = source_files(str(resolve_path(pattern, here)))
            if not files:
                errors.append(f"{field}: no readable file matches '{pattern}'")
            for path in files if isinstance(source, JsonlSource) else ():  # QA records: checked as rendered
                problem = (_parquet_problem if isinstance(source, ParquetSource) else _jsonl_problem)(
                    path, source.text_field)
                if problem:
                    errors.append(f"{field}: {path}: {problem}")
    return errors


def _filter_files(sweep: Sweep, here: Path) -> list[str]:
    """A filter's file (a fastText classifier) exists, loads, and has the labels the filter keeps or removes."""
    errors = []
    for name, corpus in sweep.corpora.items():
        for block, argument in FILTER_FILE_ARGUMENTS.items():
            kwargs = corpus.curation.filters.get(block)
            if kwargs is None:
                continue
            field = f"corpora.{name}.curation.filters.{block}.{argument}"
            if not kwargs.get(argument):
                errors.append(f"{field}: missing (the {block} filter reads its model from this file)")
                continue
            path = resolve_path(kwargs[argument], here)
            try:
                FILTER_BLOCKS[block](**{**kwargs, argument: str(path)}).model
            except ValueError as exc:  # not found, not a model, or a label it does not have
                errors.append(f"{field}: {exc}")
    return errors


def source_files(pattern: str) -> list[str]:
    """The readable files a source path or glob names (as the curation reader expands it)."""
    return sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                  if os.path.isfile(p) and os.access(p, os.R_OK))


def _jsonl_problem(path: str, text_field: str) -> str | None:
    """Why the first lines of a (possibly compressed) JSONL file give no document, if they do not."""
    seen = bad = 0
    first_bad = None
    try:
        with fsspec.open(path, "rt", compression="infer", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line_no > SAMPLE_LINES:
                    break
                if not line.strip():
                    continue
                seen += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    bad += 1
                    first_bad = first_bad or f"line {line_no} is not JSON"
                    continue
                if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                    bad += 1
                    keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
                    first_bad = first_bad or f"line {line_no} has no string field '{text_field}' (has: {keys})"
    except UnicodeDecodeError:
        return f"not UTF-8 text within its first {SAMPLE_LINES} lines"
    except (OSError, EOFError) as exc:  # a truncated or mislabelled archive
        return f"cannot be read ({exc})"
    if seen == 0:
        return "empty"
    if bad == seen:
        return f"no usable document in the first {seen} lines: {first_bad}"
    return None


def _parquet_problem(path: str, text_field: str) -> str | None:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises its own error types for a non-parquet file
        return f"not a parquet file ({str(exc).splitlines()[0]})"
    if text_field not in names:
        return f"no column '{text_field}' (has: {', '.join(names)})"
    return None


def _problem_sets(sweep: Sweep, here: Path) -> list[str]:
    errors = []
    levels = sweep.toy_world.difficulties
    for field in ("train_set", "eval_set"):
        problem_set = getattr(sweep.probe, field)
        if problem_set.path:
            path = resolve_path(problem_set.path, here)
            if path.is_file():
                errors += [f"probe.{field}.path: {line}" for line in problem_file_errors(
                    path, problem_set.fields, need_levels=sweep.probe.difficulty == "auto")]
        elif levels is not None:
            unknown = sorted(set(problem_set.difficulty or []) - set(levels))
            if unknown:
                errors.append(f"probe.{field}.difficulty: level(s) {unknown} are not in the toy world's "
                              f"difficulties {levels}")
    return errors


def problem_file_errors(path: Path, fields=None, need_levels: bool = False) -> list[str]:
    """A problem set's file problems (at most one line), as the one problem-set reader sees it
    (`data_recipes.problems`: midprobe's, GSM8K's or MATH's format, or mapped `fields`);
    `need_levels`: difficulty control needs a level on its problems."""
    try:
        problems = read_problem_set(path, fields)
    except UnicodeDecodeError:
        return [f"{path}: not UTF-8 text"]
    except ProblemFormatError as exc:
        return [str(exc)]
    if not problems:
        return [f"{path}: no problems"]
    if need_levels and not has_levels(problems):
        return [f"{path}: no difficulty levels, and probe.difficulty: auto chooses among them (use difficulty: "
                f"fixed, or give the problems a difficulty or level field)"]
    return []


def checkpoint_errors(path: Path, field: str) -> list[str]:
    """An HF checkpoint directory midprobe can train or probe: a supported architecture."""
    try:
        ModelSpec.from_hf_config(path)
    except (ValueError, KeyError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).removeprefix(f"{path / 'config.json'}: ")
        return [f"{field}: {path} is not a supported model ({what})"]
    return []


def _vocab_size(tokenizer_dir: Path) -> int:
    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def _base(sweep: Sweep, here: Path) -> list[str]:
    if not sweep.base.hf_path:
        return []
    base = resolve_path(sweep.base.hf_path, here)
    if not (base / "config.json").is_file():
        return []  # reported by the schema check
    errors = checkpoint_errors(base, "base.hf_path")
    if errors:
        return errors
    embedding = json.loads((base / "config.json").read_text()).get("vocab_size")
    if sweep.tokenizer.train_on:
        vocab, field = sweep.tokenizer.vocab_size, "tokenizer.vocab_size"
    else:
        tokenizer = resolve_path(sweep.tokenizer.path, here) if sweep.tokenizer.path else base
        if not (tokenizer / "tokenizer.json").is_file():
            return [] if sweep.tokenizer.path else [f"base.hf_path: no tokenizer.json in {base} (set tokenizer.path)"]
        vocab, field = _vocab_size(tokenizer), "tokenizer.path" if sweep.tokenizer.path else "base.hf_path"
    if embedding is not None and vocab > embedding:
        return [f"{field}: the tokenizer has {vocab} tokens, more than the base's embedding ({embedding} rows)"]
    return []


def _budgets(sweep: Sweep) -> list[str]:
    """Every mid-training stage buys at least one optimizer step."""
    cfg = sweep.midtrain
    data_parallel = cfg.nproc_per_node // (cfg.tensor_model_parallel_size * cfg.pipeline_model_parallel_size)
    step = cfg.seq_length * cfg.micro_batch_size * cfg.grad_accum * data_parallel
    stages = [("base.pretrain", sweep.base.pretrain)] + [
        (f"recipes.{name}.{phase}", getattr(recipe, phase))
        for name, recipe in sweep.recipes.items() for phase in ("stable", "decay")]
    return [f"{field}.tokens: {stage.tokens} is below one optimizer step ({step} tokens = seq_length "
            f"{cfg.seq_length} x micro_batch_size {cfg.micro_batch_size} x grad_accum {cfg.grad_accum} "
            f"x {data_parallel} data-parallel)"
            for field, stage in stages if stage is not None and stage.tokens < step]


def executor(section: ExecutorSection, **overrides) -> ExecutorSection:
    """The sweep's executor with command-line overrides, validated like the sweep file itself."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return ExecutorSection.model_validate({**section.model_dump(), **given})
    except ValidationError as exc:
        err = exc.errors()[0]
        option = {"type": "--executor"}.get(str(err["loc"][0]), "--" + str(err["loc"][0]).replace("_", "-"))
        raise InputError(f"{option}: {err['msg'].removeprefix('Value error, ')} (got {err['input']!r})") from None


def workspace(path: Path) -> Path:
    """A workspace that exists as a writable directory or can be created as one; nothing is left
    behind. Checked by writing: a file is created and removed in the workspace, or in its deepest
    existing parent when it is new (the run store creates the rest), because permission bits and
    `os.access` pass for root where writing fails (`/sys`, a read-only mount)."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: the workspace is a file, not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{path}: the workspace cannot be created ({existing} is a file, not a directory)")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".midprobe-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        what = "written" if existing == path else f"created ({existing} is not writable)"
        raise InputError(f"{path}: the workspace cannot be {what}: {exc.strerror}") from None
    return path


def finished_workspace(path: Path) -> Path:
    """A workspace some run has already written (for commands that only read it)."""
    if not (path / "index.sqlite").is_file():
        raise InputError(f"{path}: not a midprobe workspace (no index.sqlite)")
    return path


def finished_probe(workspace: Path, sweep: str) -> None:
    """A sweep with at least one finished probe in `workspace` (read only: a refused `report`
    writes nothing, not even the index's lock)."""
    finished_workspace(workspace)
    # immutable: no -wal/-shm files appear; a check may miss a probe finishing this very moment
    db = sqlite3.connect(f"file:{workspace / 'index.sqlite'}?mode=ro&immutable=1", uri=True)
    try:
        keys = [key for (key,) in db.execute(
            "SELECT key FROM sweep_members WHERE sweep=? AND stage='probe'", (sweep,))]
    finally:
        db.close()
    if not any((workspace / "probe" / key / "manifest.json").is_file() for key in keys):
        raise InputError(f"{workspace}: no finished probe of sweep '{sweep}' (midprobe run writes them)")


def load_sweep(path: str | Path) -> Sweep:
    """Load and fully validate a sweep; raise InputError listing every problem."""
    errors = validate_sweep(path)
    if errors:
        more = f" (+{len(errors) - 1} more: midprobe validate {path})" if len(errors) > 1 else ""
        raise InputError(f"{path}: {errors[0]}{more}")
    sweep = parse_sweep(Path(path))[0]
    if sweep.probe.calibration:  # from here on, where the file is, whatever the working directory
        sweep.probe.calibration = str(resolve_path(sweep.probe.calibration, Path(path).parent))
    return sweep


def validate_sweep(path: str | Path) -> list[str]:
    path = Path(path)
    sweep, errors = parse_sweep(path)
    if sweep is not None:
        errors = cross_check(sweep, path) + check_sweep(sweep, path)
    return errors
