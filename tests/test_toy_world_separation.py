"""The toy world separates recipes in its designed order (README "The toy world"), measured with seeds.

Runs the smallest cut of the bundled toy sweep that still separates two recipes (qa_cot and
qa_short, probe seeds 0 and 1; the same stage keys as the demo's, so a demo workspace has the
answer too) and checks what the toy world promises: chain-of-thought QA ranks first with a
bootstrap interval of its lead excluding 0, the probe set is informative for the base (pooled
pass@8 in 20-80 %) and for GRPO (most groups not uniform early on) -- and that the probe
really learns on the chain-of-thought checkpoint (held-out accuracy rises, CI above 0), which
its random-reward control (rewards shuffled within each group) does not.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pipelines.ranking import rank, run_scores
from pipelines.results import collect
from pipelines.store import RunStore
from pipelines.sweep import bundled_sweep
from rl_probe.difficulty import pooled_pass_at_k

DESIGNED_ORDER = ["qa_cot", "qa_short"]  # README "What the recipes change": best first

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
    sweep["probe"]["control"] = "random_reward"  # extra probes: the ranked probes keep the demo's keys
    path = tmp / "toy-separation.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(path), "--workspace", str(tmp / "ws")],
                         capture_output=True, text=True, timeout=3600, env={**os.environ, "WANDB_MODE": "offline"})
    assert run.returncode == 0, run.stderr[-4000:]
    return collect(RunStore(tmp / "ws"), "toy-separation")


def test_recipes_rank_in_the_designed_order_with_a_lead_beyond_noise(results):
    ranking = rank(results.probes)
    assert [r.recipe for r in ranking.recipes] == DESIGNED_ORDER
    point, low, high = ranking.difference_ci(*DESIGNED_ORDER)
    assert low > 0, f"qa_cot - qa_short = {point:+.3f}, CI [{low:+.3f}, {high:+.3f}] includes 0"


def test_probe_set_is_informative(results):
    difficulty = results.difficulty.read_json("difficulty.json")
    assert 0.2 <= pooled_pass_at_k(difficulty["pass_at_k_by_level"], difficulty["chosen_levels"]) <= 0.8
    for recipe in DESIGNED_ORDER:  # per recipe over its seeds, as the report's diagnostics show it
        uniform = [v for run in results.probes if run.recipe == recipe
                   for step, v in run.metrics["probe/uniform_group_ratio"] if step <= 10]
        assert np.mean(uniform) < 0.5, f"{recipe}: most GRPO groups of steps <= 10 are uniform"


def test_probe_learns_on_the_chain_of_thought_checkpoint(results):
    learning = next(r for r in rank(results.probes, score="fitted_gain").recipes if r.recipe == "qa_cot")
    assert learning.ci_low > 0, (f"qa_cot fitted gain {learning.score:+.3f}, "
                                 f"CI [{learning.ci_low:+.3f}, {learning.ci_high:+.3f}] includes 0")


def test_the_random_reward_control_does_not_produce_qa_cots_gain(results):
    """The control's gain is not bounded near 0 from below: shuffled rewards are zero-mean in
    expectation, but their updates move a checkpoint that already answers well away from its answers
    (on the toy world, toward short ones: docs/results/2026-12-05-toy-base-draw.md). What the control
    must show is that the reward, not the update alone, makes the probe's gain."""
    def fitted_gain(runs):
        return float(np.mean([run_scores(r.correct, "fitted_gain") for r in runs if r.recipe == "qa_cot"]))

    learned, control = fitted_gain(results.probes), fitted_gain(results.controls)
    assert learned > 0.05, f"qa_cot's fitted gain {learned:+.3f}"
    assert control < learned / 2, f"control's fitted gain {control:+.3f} vs qa_cot's {learned:+.3f}"
