"""The toy world separates recipes (README "The toy world"), measured with seeds.

Runs the bundled toy sweep cut down to three recipes on two seeds (16 minutes on a busy 2-core machine) and
checks what the toy world promises: recipes whose scores differ with a bootstrap interval
excluding 0, a probe difficulty at which the base's pass@8 lies in 20-80 %, mostly informative
GRPO groups early on — and, separately, the designed order, which does not hold yet.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pipelines.ranking import rank
from pipelines.results import collect
from pipelines.store import RunStore
from pipelines.sweep import bundled_sweep

DESIGNED_ORDER = ["qa_cot", "qa_short", "mathweb"]  # README "What the recipes change": best first

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("separation")
    sweep = yaml.safe_load(bundled_sweep("toy").read_text())
    sweep["name"] = "toy-separation"
    sweep["recipes"] = {r: sweep["recipes"][r] for r in DESIGNED_ORDER}
    used = {c for r in sweep["recipes"].values() for part in (r["stable"], r["decay"]) for c in part["mix"]}
    sweep["corpora"] = {c: v for c, v in sweep["corpora"].items()
                        if c in used or c in sweep["tokenizer"]["train_on"]}
    sweep["probe"]["seeds"] = [0, 1]
    path = tmp / "toy-separation.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(path), "--workspace", str(tmp / "ws")],
                         capture_output=True, text=True, timeout=3600, env={**os.environ, "WANDB_MODE": "offline"})
    assert run.returncode == 0, run.stderr[-4000:]
    return collect(RunStore(tmp / "ws"), "toy-separation")


def test_recipes_separate_at_an_informative_difficulty(results):
    ranking = rank(results.probes)
    best, worst = ranking.recipes[0].recipe, ranking.recipes[-1].recipe
    point, low, high = ranking.difference_ci(best, worst)
    assert low > 0, f"{best} - {worst} = {point:+.3f}, CI [{low:+.3f}, {high:+.3f}] includes 0"

    difficulty = results.difficulty.read_json("difficulty.json")
    for level in difficulty["chosen_levels"]:
        assert 0.2 <= difficulty["pass_at_k_by_level"][str(level)] <= 0.8
    for recipe in DESIGNED_ORDER:  # per recipe over its seeds, as the report's diagnostics show it
        uniform = [v for run in results.probes if run.recipe == recipe
                   for step, v in run.metrics["probe/uniform_group_ratio"] if step <= 10]
        assert np.mean(uniform) < 0.5, f"{recipe}: most GRPO groups of steps <= 10 are uniform"


@pytest.mark.xfail(strict=True, reason="open (README 'The toy world'): qa_cot's worked solutions need each "
                   "step's number copied from the question, which toy-s does not learn within the demo's "
                   "budget; strict, so the day the designed order holds this reports it")
def test_recipes_rank_in_the_designed_order(results):
    assert [r.recipe for r in rank(results.probes).recipes] == DESIGNED_ORDER
