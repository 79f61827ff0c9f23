"""Each stage's code version, and the digest of the source its outputs depend on.

A stage run's key holds its stage's version (`pipelines.plan.stage_run`), so a version bump
re-runs the stage and everything downstream. `code_versions.json` records, per stage, the
version, the sources (files, globs, `!` excludes, `file::function` for one function of a
file) with their digest, and the outputs (files in a run directory) later stages read.
`tests/test_code_versions.py` fails as soon as a stage's sources no longer hash to the
recorded digest, so a change cannot reach a workspace without a decision:

    python -m pipelines.code_versions                  # which stages changed
    python -m pipelines.code_versions --bump STAGE --why "..."   # outputs change: new keys
    python -m pipelines.code_versions --same-outputs STAGE --before WS1 --after WS2

`--same-outputs` (a refactor: keys kept) is recorded only when the stage's runs that two
workspaces share (the same sweep run by the code before and after, e.g. `midprobe demo
--preset smoke`) wrote equal outputs, wall-clock metrics aside.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Optional

import typer

from runfiles import METRICS_FILE, read_metrics

TABLE = Path(__file__).with_name("code_versions.json")
SOURCE_ROOT = Path(__file__).resolve().parent.parent  # where the packages lie


@cache
def recorded() -> dict[str, dict]:
    """{stage: {version, digest, sources}} as code_versions.json records it."""
    return json.loads(TABLE.read_text())


def code_versions() -> dict[str, int]:
    """Each stage's code version, part of its runs' keys: a test fails when a stage's code changed
    and no decision was recorded, so no finished run made by other code is reused."""
    return {stage: entry["version"] for stage, entry in recorded().items()}


def _function_source(path: Path, name: str) -> str:
    text = path.read_text()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return ast.get_source_segment(text, node)
    raise ValueError(f"{path}: no top-level function or class {name}")


def sources(patterns: list[str], root: Path | None = None) -> dict[str, str]:
    """The text of each source a stage depends on, by its name relative to `root`."""
    root = root or SOURCE_ROOT
    texts: dict[str, str] = {}
    for pattern in patterns:
        if pattern.startswith("!"):
            texts.pop(pattern[1:], None)
        elif "::" in pattern:
            file, name = pattern.split("::")
            texts[pattern] = _function_source(root / file, name)
        else:
            matched = sorted(root.glob(pattern))
            if not matched:
                raise ValueError(f"{TABLE.name}: {pattern} matches no file under {root}")
            texts.update({str(path.relative_to(root)): path.read_text() for path in matched})
    return texts


def _code(name: str, text: str) -> str:
    """What of a source can change outputs: Python as its syntax tree without docstrings (a comment
    or docstring edit needs no decision), any other file as it is."""
    if not name.split("::")[0].endswith(".py"):
        return text
    tree = ast.parse(text)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def digest(patterns: list[str], root: Path | None = None) -> str:
    blob = hashlib.sha256()
    for name, text in sorted(sources(patterns, root).items()):
        code = _code(name, text)
        blob.update(f"{name}\0{len(code)}\0{code}".encode())
    return blob.hexdigest()


def changed(root: Path | None = None, table: dict[str, dict] | None = None) -> dict[str, str]:
    """Stages whose sources under `root` no longer hash to the recorded digest -> current digest."""
    table = recorded() if table is None else table
    current = {stage: digest(entry["sources"], root) for stage, entry in table.items()}
    return {stage: value for stage, value in current.items() if value != table[stage]["digest"]}


# wall-clock measurements in metrics files: never equal across runs
TIMING_METRICS = ("timing_s/", "perf/")


def _output_bytes(path: Path) -> bytes:
    if path.name != METRICS_FILE:
        return path.read_bytes()
    return json.dumps([{**record, "data": {name: value for name, value in record["data"].items()
                                           if not name.startswith(TIMING_METRICS)}}
                       for record in read_metrics(path)], sort_keys=True).encode()


def output_digests(workspace: Path, stage: str) -> dict[str, str]:
    """{key: digest of its outputs} of every published run of `stage` in `workspace`."""
    patterns = recorded()[stage]["outputs"]
    digests = {}
    for run in sorted((Path(workspace) / stage).glob("*/manifest.json")):
        blob = hashlib.sha256()
        for path in sorted({p for pattern in patterns for p in run.parent.glob(pattern) if p.is_file()}):
            blob.update(f"{path.relative_to(run.parent)}\0".encode() + _output_bytes(path))
        digests[run.parent.name] = blob.hexdigest()
    return digests


def differing_outputs(stage: str, before: Path, after: Path) -> tuple[int, list[str]]:
    """(runs of `stage` both workspaces hold, the keys among them whose outputs differ)."""
    old, new = output_digests(before, stage), output_digests(after, stage)
    shared = sorted(old.keys() & new.keys())
    return len(shared), [key for key in shared if old[key] != new[key]]


def _record(stage: str, bump: bool, why: str | None = None) -> None:
    table = json.loads(TABLE.read_text())
    entry = table[stage]
    entry["digest"] = digest(entry["sources"])
    if bump:
        entry["version"] += 1
        entry.setdefault("changes", {})[str(entry["version"])] = why
    TABLE.write_text(json.dumps(table, indent=2) + "\n")
    recorded.cache_clear()
    kept = "new keys: its runs and everything downstream re-run" if bump else "keys kept"
    typer.echo(f"{stage}: version {entry['version']}, digest {entry['digest'][:12]} ({kept})")


def _same_outputs_shown(stage: str, before: Path | None, after: Path | None) -> None:
    if before is None or after is None:
        raise typer.BadParameter("--same-outputs needs --before and --after: workspaces of one sweep "
                                 "run by the code before and after the change")
    shared, differing = differing_outputs(stage, before, after)
    if not shared:
        raise typer.BadParameter(f"no run of {stage} is in both {before} and {after}")
    if differing:
        raise typer.BadParameter(f"{len(differing)} of {shared} {stage} runs wrote other outputs "
                                 f"({', '.join(differing[:3])}): record it with --bump {stage}")
    typer.echo(f"{stage}: {shared} runs wrote the same outputs before and after")


def main(bump: Optional[str] = typer.Option(None, "--bump", metavar="STAGE", help=(
             "STAGE's outputs change: record its sources and raise its version")),
         same_outputs: Optional[str] = typer.Option(None, "--same-outputs", metavar="STAGE", help=(
             "STAGE's code changed, its outputs did not: record its sources, keep its version")),
         why: Optional[str] = typer.Option(None, help="with --bump: what the new version changes (kept in the table)"),
         before: Optional[Path] = typer.Option(None, help="workspace of the sweep run before the change"),
         after: Optional[Path] = typer.Option(None, help="workspace of the same sweep run after it")) -> None:
    """Show which stages' code changed since their versions were recorded, or record a decision."""
    stage = bump or same_outputs
    if stage is not None and stage not in recorded():
        raise typer.BadParameter(f"unknown stage '{stage}' (known: {', '.join(sorted(recorded()))})")
    if same_outputs:
        _same_outputs_shown(same_outputs, before, after)
    if bump and not why:
        raise typer.BadParameter("--bump needs --why: what the new version changes")
    if stage is not None:
        _record(stage, bump=bool(bump), why=why)
        return
    stale = changed()
    for stage, entry in sorted(recorded().items()):
        typer.echo(f"{stage:16} version {entry['version']}  {'CHANGED' if stage in stale else 'recorded'}")
    if stale:
        typer.echo("record each changed stage with --bump STAGE or --same-outputs STAGE", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
