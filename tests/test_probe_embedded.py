import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_probe.embedded import read_metrics, run_probe
from rl_probe.spec import get_probe_spec
from test_probe_helpers import FEW_SHOT, TEMPLATE, make_problems, tiny_checkpoint, write_jsonl

SMOKE = get_probe_spec("toy-smoke-v1")
VOLATILE = ("timing_s/", "perf/throughput")  # wall-clock, differs between identical runs

REQUIRED_STEP_METRICS = [
    "critic/score/mean", "critic/advantages/mean", "response_length/mean", "response_length/clip_ratio",
    "actor/entropy", "actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/grad_norm", "actor/lr",
    "behaviour/repetition_ratio", "behaviour/boxed_first_ratio", "behaviour/format_error_ratio",
    "behaviour/reflection_rate", "behaviour/wrong_length_mean", "probe/uniform_group_ratio",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("probe")
    checkpoint = tiny_checkpoint(root / "ckpt", sft_steps=40)
    train = write_jsonl(make_problems(48, seed=11), root / "train.jsonl")
    evals = write_jsonl(make_problems(6, seed=12, data_source="toy/eval-a")
                        + make_problems(4, seed=13, data_source="toy/eval-b"), root / "eval.jsonl")
    return checkpoint, train, evals


def _run(inputs, out_dir, seed=0, spec=SMOKE, on_metrics=None):
    checkpoint, train, evals = inputs
    return run_probe(checkpoint, spec, train, evals, seed=seed, out_dir=out_dir, on_metrics=on_metrics,
                     keep_policy=True)


def _stable(rows):
    return [{"step": r["step"], "data": {k: v for k, v in r["data"].items() if not k.startswith(VOLATILE)}}
            for r in rows]


def _final_weights(out_dir: Path):
    from safetensors.torch import load_file

    return load_file(out_dir / "policy" / "model.safetensors")


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def reference_run(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    seen = []
    summary = _run(inputs, out, on_metrics=lambda step, m: seen.append((step, m)))
    return out, summary, seen


def test_artifacts_and_metric_names(reference_run):
    out, summary, seen = reference_run
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(SMOKE.steps + 1))
    assert [(s, m) for s, m in seen] == [(r["step"], r["data"]) for r in rows]
    for row in rows[1:]:
        missing = [name for name in REQUIRED_STEP_METRICS if name not in row["data"]]
        assert not missing, missing
    n = SMOKE.eval_samples
    eval_steps = [0] + [s for s in range(1, SMOKE.steps + 1) if s % SMOKE.eval_every == 0]
    for step in eval_steps:
        data = rows[step]["data"]
        assert {f"val-core/toy/eval-a/acc/mean@{n}", f"val-core/toy/eval-b/acc/mean@{n}"} <= data.keys()
        lines = (out / "rollouts" / f"step_{step}.jsonl").read_text().splitlines()
        assert len(lines) == 10 * n
        assert {"prompt", "response", "reward", "acc"} <= json.loads(lines[0]).keys()
    profile = json.loads((out / "profile.json").read_text())
    assert list(profile["pass_at_k"]) == [str(k) for k in SMOKE.passk_ks]
    passk = list(profile["pass_at_k"].values())
    assert passk == sorted(passk) and 0 <= passk[0] and passk[-1] <= 1
    assert set(profile["fewshot"]["acc_by_source"]) == {"toy/eval-a", "toy/eval-b"}
    assert summary == json.loads((out / "summary.json").read_text())
    # the report's completions: the first held-out answers at the first and last eval, as written there
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert [c["step"] for c in completions] == [0] * 4 + [SMOKE.steps] * 4
    for step in (0, SMOKE.steps):
        written = [json.loads(line) for line in (out / "rollouts" / f"step_{step}.jsonl").read_text().splitlines()][:4]
        assert [c for c in completions if c["step"] == step] == [
            {k: w[k] for k in ("step", "id", "prompt", "response", "reward", "acc", "pred")} for w in written]
    # a finished probe keeps its final policy (asked for here) and no resume state
    assert not (out / "state").exists() and (out / "policy" / "config.json").is_file()
    assert summary["prompts"] == {"max_prompt_length": SMOKE.max_prompt_length,
                                  "train": {"total": 48, "kept": 48, "dropped": 0},
                                  "eval": {"total": 10, "kept": 10, "dropped": 0}}
    assert rows[0]["data"]["data/train_prompts_kept"] == 48 and rows[0]["data"]["data/eval_prompts_dropped"] == 0
    assert summary["spec_hash"] == SMOKE.content_hash() and summary["final_step"] == SMOKE.steps
    assert summary["base_pass_at_k"] == profile["pass_at_k"]
    assert set(summary["evals"]) == {str(s) for s in eval_steps}
    # the GRPO signal is not degenerate on this fixture: some groups disagree, so gradients flow
    assert any(r["data"]["probe/uniform_group_ratio"] < 1 for r in rows[1:])
    assert all(r["data"]["actor/grad_norm"] > 0 for r in rows[1:])


def test_same_seed_same_run_other_seed_other_run(inputs, reference_run, tmp_path):
    ref_out, _, _ = reference_run
    again = _run(inputs, tmp_path / "again")
    assert _stable(read_metrics(tmp_path / "again" / "metrics.jsonl")) == _stable(read_metrics(ref_out / "metrics.jsonl"))
    _assert_same_weights(_final_weights(tmp_path / "again"), _final_weights(ref_out))
    assert again["base_pass_at_k"] == reference_run[1]["base_pass_at_k"]
    _run(inputs, tmp_path / "other", seed=1)
    assert _stable(read_metrics(tmp_path / "other" / "metrics.jsonl")) != _stable(read_metrics(ref_out / "metrics.jsonl"))


class _Crash(Exception):
    pass


def test_resume_after_crash_is_bitwise_equal(inputs, reference_run, tmp_path):
    ref_out, ref_summary, _ = reference_run

    def crash_at_step_3(step, metrics):  # step 3 is logged, its checkpoint (every 2) is not
        if step == 3:
            raise _Crash

    with pytest.raises(_Crash):
        _run(inputs, tmp_path, on_metrics=crash_at_step_3)
    assert [p.name for p in (tmp_path / "state").glob("step_*.pt")] == ["step_000002.pt"]
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a writer killed mid-line
        f.write('{"step": 4, "data": {"critic/sc')
    resumed = _run(inputs, tmp_path)
    assert _stable(read_metrics(tmp_path / "metrics.jsonl")) == _stable(read_metrics(ref_out / "metrics.jsonl"))
    _assert_same_weights(_final_weights(tmp_path), _final_weights(ref_out))
    assert resumed["evals"] == ref_summary["evals"]


def test_resume_refuses_another_seed(inputs, reference_run, tmp_path):
    import shutil

    shutil.copytree(reference_run[0], tmp_path / "run")
    with pytest.raises(ValueError, match="another spec or seed"):
        _run(inputs, tmp_path / "run", seed=5)


def test_kl_entropy_epochs_and_zero_shot_path(inputs, tmp_path):
    spec = SMOKE.model_copy(update={"kl_coef": 0.1, "entropy_coeff": 0.01, "ppo_epochs": 2, "steps": 2,
                                    "loss_agg_mode": "seq-mean-token-mean", "fewshot_k": 0})
    summary = _run(inputs, tmp_path, spec=spec)
    data = read_metrics(tmp_path / "metrics.jsonl")[-1]["data"]
    assert data["actor/kl_coef"] == 0.1 and data["actor/kl_loss"] >= 0
    assert data["actor/ppo_kl"] != 0  # second epoch sees an updated policy
    # no shots: no few-shot evaluation (it would repeat the step-0 evaluation)
    assert "fewshot" not in json.loads((tmp_path / "profile.json").read_text())
    assert summary["base_fewshot_acc"] is None


def test_rejects_a_verl_spec(inputs, tmp_path):
    with pytest.raises(ValueError, match="engine"):
        _run(inputs, tmp_path, spec=get_probe_spec("octothinker-v1"))


KILL_SCRIPT = """
import sys, torch
from pathlib import Path
torch.set_num_threads(1)
from rl_probe.embedded import run_probe
from rl_probe.spec import get_probe_spec
spec = get_probe_spec("toy-smoke-v1").model_copy(update={"steps": 12, "checkpoint_every": 3})
ckpt, train, evals, out = map(Path, sys.argv[1:5])
run_probe(ckpt, spec, train, evals, seed=0, out_dir=out, keep_policy=True)
"""


@pytest.mark.slow
def test_kill_9_then_resume_is_bitwise_equal(inputs, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(KILL_SCRIPT)
    args = [sys.executable, str(script), *map(str, inputs)]
    subprocess.run(args + [str(tmp_path / "straight")], check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(args + [str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((killed / "state").glob("step_00000[6-9].pt")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    subprocess.run(args + [str(killed)], check=True, capture_output=True)

    assert _stable(read_metrics(killed / "metrics.jsonl")) == _stable(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    _assert_same_weights(_final_weights(killed), _final_weights(tmp_path / "straight"))


def test_bypass_mode_reuses_the_rollouts_log_probs(inputs, reference_run, tmp_path):
    # The sampler's log-probs equal the training forward's, so skipping the recompute leaves
    # the first update as it was: same rollouts, same PPO ratios and losses.
    _run(inputs, tmp_path, spec=SMOKE.model_copy(update={"bypass_mode": True, "steps": 1}))
    bypassed = read_metrics(tmp_path / "metrics.jsonl")[1]["data"]
    recomputed = read_metrics(reference_run[0] / "metrics.jsonl")[1]["data"]
    assert bypassed["critic/score/mean"] == recomputed["critic/score/mean"]
    for name in ("actor/pg_loss", "actor/ppo_kl", "actor/pg_clipfrac", "actor/grad_norm"):
        assert bypassed[name] == pytest.approx(recomputed[name], abs=1e-4), name


def test_the_random_reward_control_scores_the_same_rollouts_and_updates_on_shuffled_rewards(inputs, reference_run,
                                                                                             tmp_path):
    _run(inputs, tmp_path, spec=SMOKE.with_random_reward().model_copy(update={"steps": 1}))
    control = read_metrics(tmp_path / "metrics.jsonl")[1]["data"]
    real = read_metrics(reference_run[0] / "metrics.jsonl")[1]["data"]
    # the same rollouts, and each group's rewards kept (so the same mean) ...
    for name in ("critic/score/mean", "behaviour/accuracy", "probe/uniform_group_ratio", "response_length/mean"):
        assert control[name] == real[name], name
    # ... but given to other rollouts: another update
    assert control["actor/pg_loss"] != pytest.approx(real["actor/pg_loss"], abs=1e-6)


def test_sampled_avg_at_k_beside_greedy_accuracy_at_the_first_and_last_eval(inputs, tmp_path):
    from pipelines.ranking import load_eval_correctness

    spec = SMOKE.model_copy(update={"eval_samples": 1, "eval_temperature": 0.0, "eval_sampled": 4, "steps": 2,
                                    "eval_every": 1})
    _run(inputs, tmp_path, spec=spec)
    rows = {r["step"]: r["data"] for r in read_metrics(tmp_path / "metrics.jsonl")}
    for step in (0, 1, 2):
        assert {"val-core/toy/eval-a/acc/mean@1", "val-core/toy/eval-b/acc/mean@1"} <= rows[step].keys()
        assert ("val-core/toy/eval-a/acc/mean@4" in rows[step]) == (step != 1)
    steps, ids, greedy = load_eval_correctness(tmp_path)
    _, sampled_ids, sampled = load_eval_correctness(tmp_path, "eval-sampled")
    assert steps == [0, 1, 2] and sampled.shape == (2, 10) and sampled_ids == ids
    assert set(greedy.flat) <= {0.0, 1.0} and set(sampled.flat) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    eval_a = [i for i, problem in enumerate(ids) if problem.startswith("toy/eval-a")]
    for step, row in zip((0, 2), sampled):  # mean@4 is the sampled rows' mean, per data source
        assert rows[step]["val-core/toy/eval-a/acc/mean@4"] == pytest.approx(row[eval_a].mean())


def test_prompts_over_the_length_limit_are_dropped_from_train_and_eval_and_counted(inputs, tmp_path, capsys):
    checkpoint, _, _ = inputs
    long = "What is 2 plus 3, given that " + "we are counting apples and pears and plums " * 8 + "?"
    train = make_problems(40, seed=21) + [dict(p, question=long) for p in make_problems(2, seed=22)]
    evals = make_problems(9, seed=23) + [dict(make_problems(1, seed=24)[0], question=long)]
    train_file = write_jsonl(train, tmp_path / "train.jsonl")
    eval_file = write_jsonl(evals, tmp_path / "eval.jsonl")
    spec = SMOKE.model_copy(update={"steps": 1, "eval_every": 1})
    summary = run_probe(checkpoint, spec, train_file, eval_file, seed=0, out_dir=tmp_path / "out")
    assert summary["prompts"]["train"] == {"total": 42, "kept": 40, "dropped": 2}
    assert summary["prompts"]["eval"] == {"total": 10, "kept": 9, "dropped": 1}
    assert "dropped 2 of 42 train and 1 of 10 eval problems" in capsys.readouterr().out  # the stage log
    step0 = read_metrics(tmp_path / "out" / "metrics.jsonl")[0]["data"]
    assert (step0["data/train_prompts_dropped"], step0["data/eval_prompts_kept"]) == (2, 9)
    rollouts = (tmp_path / "out" / "rollouts" / "step_0.jsonl").read_text().splitlines()
    assert len(rollouts) == 9 * spec.eval_samples  # eval numbers are over the kept problems
    assert not (tmp_path / "out" / "state").exists() and not (tmp_path / "out" / "policy").exists()

    from rl_probe.prompts import PromptLengthError

    strict = spec.model_copy(update={"max_prompt_drop_share": 0.05})
    with pytest.raises(PromptLengthError, match=r"eval set .*: 1 of 10 prompts \(10%\) are longer than "
                                                r"max_prompt_length=64 tokens .* allows 5%"):
        run_probe(checkpoint, strict, train_file, eval_file, seed=0, out_dir=tmp_path / "strict")
    assert not (tmp_path / "strict" / "metrics.jsonl").exists()  # refused before any work


@pytest.mark.parametrize("few_shot", [False, True])
def test_a_probe_step_creates_every_tensor_on_the_models_device(inputs, tmp_path, few_shot):
    """With torch's default device set to 'meta', a tensor made without the model's device is a
    meta tensor, and the first op that mixes it with the model's tensors fails (or it has no data).
    A few-shot template makes the sampler share the prompts' common prefix too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_probe import embedded
    from rl_probe.prompts import Prompter, load_problems
    from rl_probe.sampler import shared_prefix_length
    from rl_probe.spec import PromptTemplate

    checkpoint, train, evals = inputs
    template = PromptTemplate(name="two-shot", text=FEW_SHOT + TEMPLATE) if few_shot else SMOKE.template
    spec = SMOKE.model_copy(update={"kl_coef": 0.1, "template": template})  # the reference model's forward too
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    reference = embedded._frozen_copy(checkpoint, "cpu")
    optimizer = embedded.make_optimizer(model, spec)
    prompter = Prompter(tokenizer, spec, model.generation_config.eos_token_id)
    assert (shared_prefix_length([prompter.prompt_ids(p) for p in load_problems(evals)]) > 0) == few_shot
    (tmp_path / "rollouts").mkdir()
    torch.set_default_device("meta")
    try:
        metrics = embedded.grpo_step(model, reference, optimizer, prompter, load_problems(train), spec, 0, 1,
                                     embedded._actor_config(spec))
        metrics.update(embedded.evaluate(model, prompter, load_problems(evals), spec, 0, 1, tmp_path))
    finally:
        torch.set_default_device(None)
    assert np.isfinite(metrics["actor/grad_norm"]) and "val-core/toy/eval-a/acc/mean@2" in metrics
