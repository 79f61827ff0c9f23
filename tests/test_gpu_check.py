"""dev/gpu_check.py's dry run on this CPU machine, in a minimal environment: torch,
transformers and their own requirements, plus only the wheels listed in
dev/gpu_check_wheels.md (everything else installed here is out of sys.path)."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def listed_wheels() -> list[str]:
    """The distribution names in the wheel table of dev/gpu_check_wheels.md."""
    text = (ROOT / "dev" / "gpu_check_wheels.md").read_text()
    core = text.split("## Needed", 1)[1].split("##", 1)[0]
    return re.findall(r"^\| `([A-Za-z0-9_.-]+)==", core, flags=re.M)


def _closure(names: list[str]) -> set[str]:
    """The distributions `names` need, following requirements without extras."""
    from importlib.metadata import PackageNotFoundError, requires
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        seen.add(name)
        for line in reqs:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def minimal_site(target: Path, wheels: list[str]) -> Path:
    """A site-packages holding only torch, transformers, their requirements and `wheels`
    (links to this environment's installed files), as on a bare GPU box."""
    from importlib.metadata import distribution

    site_packages = Path(distribution("torch").locate_file(""))
    target.mkdir()
    for name in _closure(["torch", "transformers", *wheels]):
        for entry in {Path(f).parts[0] for f in distribution(name).files or []}:
            if entry != ".." and (site_packages / entry).exists() \
                    and not (target / entry).exists():
                (target / entry).symlink_to(site_packages / entry)
    return site_packages


# Runs at the start of every process of the check (its training subprocesses too):
# this environment's site-packages is replaced by the minimal one.
SITECUSTOMIZE = """
import sys
sys.path[:] = [p for p in sys.path if p != {full!r}] + [{minimal!r}]
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dry_run_with_only_the_listed_wheels(tmp_path):
    wheels = listed_wheels()
    assert "megatron-core" in wheels and "verl" not in wheels
    full = minimal_site(tmp_path / "site-packages", wheels)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(
        full=str(full), minimal=str(tmp_path / "site-packages")))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    run = subprocess.run([sys.executable, "dev/gpu_check.py", "--dry-run", "--out",
                          str(tmp_path / "work")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert lines[0].startswith("gpu-check: --dry-run: running the CPU side only")
    status = {line.split()[1].rstrip(":"): line.split()[0] for line in lines[1:-1]
              if line.split()[0] in ("PASS", "FAIL", "SKIP")}
    assert status == {
        "cpu-reference": "PASS", "cpu-megatron-distributed": "PASS",
        "cuda-fp32-torch-adamw": "SKIP", "cuda-bf16-megatron-distributed": "SKIP",
        "hf-export-cuda": "SKIP", "hf-export-bf16": "SKIP",
        "probe-update": "SKIP",  # verl (and with it ray) is not in the list
    }, run.stdout
    assert lines[-1].startswith("gpu-check: 0 failed")
