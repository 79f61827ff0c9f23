"""Run only the start of a sweep: its base and what the base needs (problem pool, tokenizer,
curations), the difficulty control and, for each recipe named, its stable and decay stages.
What docs/results/2026-12-05-toy-base-draw.md ran to compare one stage key across commits and
CPU kernels without probing.

    PYTHONPATH=CHECKOUT python dev/run_base_only.py SWEEP.yaml WORKSPACE [RECIPE ...]

CHECKOUT may be an older commit's worktree (34e3251's `load_sweep` lived in pipelines.sweep).
"""

import sys
from pathlib import Path

from rich.console import Console

from pipelines.execute import run_plan
from pipelines.plan import build_plan
from pipelines.store import RunStore

try:
    from pipelines.preflight import load_sweep
except ImportError:  # checkouts before load_sweep moved to pipelines.preflight
    from pipelines.sweep import load_sweep


def main(sweep_path: Path, workspace: Path, recipes: list[str]) -> None:
    plan = build_plan(load_sweep(sweep_path), sweep_path)
    difficulty = {dep for probe in plan.probes.values() for dep in probe.inputs.values()
                  if dep.stage == "select_problems"}
    targets = [plan.base, *difficulty, *(plan.midtrain[recipe][None][-1] for recipe in recipes)]
    # the plan runs what its probes need, so the targets stand in for its probes
    plan.probes = {(run.ref, None, 0): run for run in targets}
    plan.controls = {}
    plan.midtrain = {}
    run_plan(plan, RunStore(workspace), Console())


if __name__ == "__main__":  # the local executor's workers re-import this file
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
