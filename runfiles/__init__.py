"""Files of a stage run, written and read one way by every stage package and the run store.

A top-level package because the stage packages (data_recipes, midtrain, rl_probe) never
import `pipelines`, yet they and the store must agree on two things: how `metrics.jsonl`
survives a writer killed mid-line, and how a file is replaced so that a crash leaves the old
version or the new one, never half of one.

- `metrics.jsonl` holds one JSON object per line, `{"step": N, "data": {...}}` (verl's file
  logger's shape). A line that does not parse (the torn last line of a killed writer) is
  skipped, counted and logged; it is never fatal. A resumed writer first rewrites the file
  without such lines and without the steps past its checkpoint.
- `atomic_write` / `replace_durably`: write to a temporary file in the same directory, fsync
  it, rename it over the target and fsync the directory, so the rename itself is on disk.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"  # a probe's held-out answers before and after RL, for the report

log = logging.getLogger(__name__)


def parse_metrics_line(line: str) -> dict | None:
    """One metrics record, or None for a line that is torn or not a record."""
    record = _parse(line)
    if not isinstance(record, dict) or not isinstance(record.get("step"), int) or \
            not isinstance(record.get("data"), dict):
        return None
    return record


def _parse(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def read_jsonl(path: str | Path, parse=_parse) -> list:
    """The objects of a JSONL file (none if it does not exist); lines that do not parse are
    skipped and their number logged."""
    path = Path(path)
    if not path.exists():
        return []
    rows, skipped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if line.strip():
            row = parse(line)
            if row is None:
                skipped += 1
            else:
                rows.append(row)
    if skipped:
        log.warning("%s: skipped %d unreadable line(s) (a writer killed mid-line)", path, skipped)
    return rows


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics file; unreadable lines are skipped and their number logged."""
    return read_jsonl(path, parse_metrics_line)


def last_metrics(path: str | Path, tail_bytes: int = 1 << 14) -> dict | None:
    """The last readable record of a metrics file that may be growing (from its tail only)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    return next((r for r in map(parse_metrics_line, reversed(lines)) if r is not None), None)


def append_metrics(path: str | Path, step: int, data: dict) -> None:
    """Append one record as one line (a single write, so a kill tears at most this line)."""
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "data": data}) + "\n")


def keep_metrics_through(path: str | Path, step: int) -> list[dict]:
    """Before a writer resumes from its checkpoint at `step`: rewrite the file with only its
    readable records up to `step` (the lines after it will be logged again); return them."""
    kept = [record for record in read_metrics(path) if record["step"] <= step]
    atomic_write(path, "".join(json.dumps(record) + "\n" for record in kept))
    return kept


def atomic_write(path: str | Path, content: str | bytes) -> None:
    """Replace `path` with `content`: readers see the old file or the new one, and after a
    crash the file is one of them."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    replace_durably(tmp, path)


def replace_durably(tmp: str | Path, path: str | Path) -> None:
    """Rename a fully written `tmp` over `path` with the data and the rename on disk."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
