"""Sweep schema errors, plan structure, and the CLI's bad-input contract."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.plan import build_plan
from pipelines.sweep import bundled_sweep
from pipelines.preflight import load_sweep, validate_sweep

TOY_SMOKE = bundled_sweep("toy-smoke")


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(TOY_SMOKE.read_text())
    mutate(data)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bundled_sweeps_are_valid():
    for name in ("toy", "toy-smoke"):
        assert validate_sweep(bundled_sweep(name)) == []


def test_every_error_is_listed_with_its_field_path(tmp_path):
    def mutate(d):
        d["recipes"]["qa_cot"]["decay"]["mix"] = {"web": 0.2, "qa_cot": 0.7}
        d["recipes"]["control"]["stable"]["mix"] = {"nope": 1.0}
        d["recipes"]["qa_short"]["decay"]["tokenz"] = 5
        d["probe"]["spec"] = "no-such-spec"
        d["base"]["preset"] = "toy-huge"

    errors = validate_sweep(_write(tmp_path, mutate))
    assert "recipes.qa_cot.decay.mix: weights must sum to 1, got 0.9" in errors
    assert "recipes.qa_short.decay.tokenz: unknown key" in errors
    # schema errors stop before cross-checks; fix the schema error and the rest appear
    def mutate2(d):
        mutate(d)
        del d["recipes"]["qa_short"]["decay"]["tokenz"]
        d["recipes"]["qa_cot"]["decay"]["mix"] = {"web": 0.3, "qa_cot": 0.7}

    errors = validate_sweep(_write(tmp_path, mutate2))
    assert any(e.startswith("recipes.control.stable.mix: unknown corpus 'nope'") for e in errors)
    assert any(e.startswith("probe.spec: unknown probe spec 'no-such-spec'") for e in errors)
    assert any(e.startswith("base.preset: unknown model preset 'toy-huge'") for e in errors)


def test_missing_base_model_path(tmp_path):
    def mutate(d):
        d["base"] = {"hf_path": str(tmp_path / "missing-llama")}
        d["tokenizer"] = {"path": str(tmp_path / "missing-llama")}

    errors = validate_sweep(_write(tmp_path, mutate))
    assert any(e.startswith("base.hf_path: no HF model directory") for e in errors)


def test_a_missing_bundled_real_model_says_how_to_make_it(tmp_path):
    model = tmp_path / "models" / "smollm2-135m-instruct"
    errors = validate_sweep(_write(tmp_path, lambda d: d.update(base={"hf_path": str(model)})))
    assert f"base.hf_path: no HF model directory at {model} (config.json missing; create it with: " \
           f"midprobe materialize smollm2 --out {model})" in errors


def test_shared_stable_stage_is_one_run_and_changes_propagate(tmp_path):
    sweep = load_sweep(TOY_SMOKE)
    plan = build_plan(sweep, TOY_SMOKE)
    stables = {plan.midtrain[r][None][0].key for r in plan.midtrain}
    decays = {plan.midtrain[r][None][1].key for r in plan.midtrain}
    assert len(stables) == 1 and len(decays) == 3
    assert plan.midtrain["qa_cot"][None][1].inputs["init"] is plan.midtrain["qa_cot"][None][0]

    changed = _write(tmp_path, lambda d: d["corpora"]["qa_short"]["source"].update(docs=801))
    plan2 = build_plan(load_sweep(changed), changed)
    assert plan2.midtrain["qa_cot"][None][1].key == plan.midtrain["qa_cot"][None][1].key
    assert plan2.midtrain["qa_short"][None][1].key != plan.midtrain["qa_short"][None][1].key
    assert plan2.base.key == plan.base.key
    assert plan2.probes[("qa_short", None, 0)].key != plan.probes[("qa_short", None, 0)].key
    assert plan2.probes[("control", None, 0)].key == plan.probes[("control", None, 0)].key



def test_midtrain_replicas_are_separate_chains_keyed_by_seed_and_the_default_seed_keeps_keys(tmp_path):
    plan = build_plan(load_sweep(TOY_SMOKE), TOY_SMOKE)
    replicated = _write(tmp_path, lambda d: d["midtrain"].update(seeds=[1234, 7]))
    plan2 = build_plan(load_sweep(replicated), replicated)
    # the default seed's replica is the sweep's run without `seeds`: cached runs are reused
    assert plan2.midtrain["qa_cot"][1234][1].key == plan.midtrain["qa_cot"][None][1].key
    assert plan2.probes[("qa_cot", 1234, 0)].key == plan.probes[("qa_cot", None, 0)].key
    other = plan2.midtrain["qa_cot"][7]
    assert other[0].config.train.seed == 7 and other[1].inputs["init"] is other[0]
    assert {plan2.midtrain[r][7][0].key for r in plan2.midtrain} == {other[0].key}  # still shared
    assert other[0].key != plan.midtrain["qa_cot"][None][0].key
    assert plan2.base.key == plan.base.key  # the base is not replicated
    # 3 recipes x 2 replicas x 2 probe seeds, and the base's 2
    assert len(plan2.probes) == 14 and plan2.probes[("base", None, 0)].key == plan.probes[("base", None, 0)].key
    roles = plan2.roles[plan2.probes[("qa_cot", 7, 1)]]
    assert roles == [{"kind": "probe", "recipe": "qa_cot", "seed": 1, "replica": 7}]


@pytest.mark.parametrize("seeds, message", [
    ([], "at least 1 item"), ([1, 1], "seeds repeat"), ("0,1", "valid list")])
def test_bad_midtrain_seeds_name_the_field(tmp_path, seeds, message):
    errors = validate_sweep(_write(tmp_path, lambda d: d["midtrain"].update(seeds=seeds)))
    assert any(e.startswith("midtrain") and "seeds" in e and message in e for e in errors), errors
    both = validate_sweep(_write(tmp_path, lambda d: d["midtrain"].update(seeds=[1, 2], seed=3)))
    assert any("either seed (one run) or seeds" in e for e in both)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("case", ["missing", "unknown_key", "bad_weights", "missing_base", "bad_yaml"])
def test_bad_input_is_one_line_exit_2_and_nothing_done(tmp_path, case):
    workspace = tmp_path / "ws"
    if case == "missing":
        path = tmp_path / "nope.yaml"
    elif case == "bad_yaml":
        path = tmp_path / "sweep.yaml"
        path.write_text("name: [unclosed\n")
    else:
        path = _write(tmp_path, {
            "unknown_key": lambda d: d.update(colour="red"),
            "bad_weights": lambda d: d["recipes"]["qa_cot"]["decay"].update(mix={"web": 0.5, "qa_cot": 0.4}),
            "missing_base": lambda d: d.update(base={"hf_path": "/no/such/llama"}),
        }[case])
    result = _cli("run", str(path), "--workspace", str(workspace))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(path) in lines[0]
    assert not any(workspace.glob("*/*/manifest.json"))


def test_verl_engine_options_reach_the_probe_runs(tmp_path):
    path = _write(tmp_path, lambda d: d["probe"].update(
        spec="octothinker-v1", difficulty_max_response_length=64,
        verl={"n_gpus_per_node": 4, "rollout_engine": "sglang"}))
    plan = build_plan(load_sweep(path), path)
    probe = plan.probes[("qa_cot", None, 0)]
    assert probe.config.spec.engine == "verl"
    assert probe.config.engine_options == {"n_gpus_per_node": 4, "rollout_engine": "sglang"}
    assert "engine_options" not in build_plan(load_sweep(TOY_SMOKE), TOY_SMOKE).probes[("qa_cot", None, 0)].canonical_config


def test_unknown_verl_options_are_refused_by_validate(tmp_path):
    path = _write(tmp_path, lambda d: d["probe"].update(
        spec="octothinker-v1", difficulty_max_response_length=64,
        verl={"n_gpu_per_node": 4, "rollout_engine": "hf"}))
    errors = validate_sweep(path)
    assert "probe.verl.n_gpu_per_node: unknown key" in errors
    assert any(line.startswith("probe.verl.rollout_engine: ") for line in errors), errors


def test_every_ranking_score_can_be_chosen_in_a_sweep():
    from typing import get_args

    from pipelines.ranking import SCORES
    from pipelines.sweep import ReportSection

    assert set(get_args(ReportSection.model_fields["score"].annotation)) == set(SCORES)


def test_decay_branch_continues_at_the_stable_lr_without_warmup():
    from midtrain.schedule import learning_rate

    plan = build_plan(load_sweep(TOY_SMOKE), TOY_SMOKE)  # sets midtrain.warmup_tokens 2048
    stable, decay = (run.config.train for run in plan.midtrain["qa_cot"][None])
    assert (stable.schedule, stable.warmup_tokens) == ("constant", 2048)
    assert (decay.schedule, decay.warmup_tokens, decay.lr) == ("linear-decay", 0, stable.lr)
    base = plan.base.config.train
    assert (base.schedule, base.warmup_tokens) == ("wsd", 2048)
    lrs = [learning_rate(step, total_steps=10, warmup_steps=decay.warmup_tokens, lr=decay.lr,
                         min_lr=1e-4, schedule=decay.schedule, decay_fraction=0.2) for step in range(10)]
    assert lrs[0] == stable.lr and lrs[-1] == pytest.approx(1e-4)


def test_a_schedule_is_honoured_or_refused_in_one_line(tmp_path):
    def mutate(d):
        d["recipes"]["control"]["stable"] = {**d["recipes"]["control"]["stable"], "schedule": "cosine"}
        d["recipes"]["qa_short"]["decay"]["schedule"] = "wsd"

    # a decay branch has no LR of its own: it continues at its stable stage's
    no_lr = _write(tmp_path, lambda d: d["recipes"]["qa_cot"]["decay"].update(lr=0.001))
    assert validate_sweep(no_lr) == [
        "recipes.qa_cot.decay: a decay branch continues at its stable stage's LR: leave lr out"]
    assert sorted(validate_sweep(_write(tmp_path, mutate))) == [
        "recipes.control.stable.schedule: a stable stage that decay branches fork from holds its LR: "
        "schedule constant, not 'cosine'",
        "recipes.qa_short.decay.schedule: a decay branch continues at its stable stage's LR and decays "
        "to min_lr: schedule linear-decay or cosine, not 'wsd'",
    ]
    honoured = _write(tmp_path, lambda d: (d["recipes"]["qa_cot"]["decay"].update(schedule="cosine"),
                                           d["midtrain"].update(schedule="cosine")))
    plan = build_plan(load_sweep(honoured), honoured)
    assert plan.midtrain["qa_cot"][None][1].config.train.schedule == "cosine"
    assert plan.midtrain["qa_short"][None][1].config.train.schedule == "linear-decay"
    assert plan.base.config.train.schedule == "cosine"  # midtrain.schedule: stages run start to end


def test_corpus_files_are_relative_to_the_sweep_file(tmp_path):
    def mutate(d):
        d["corpora"]["gsm8k"] = {"source": {"type": "qa", "paths": ["data/*.jsonl"], "style": "worked"}}
        d["recipes"]["control"]["decay"]["mix"] = {"gsm8k": 1.0}

    path = _write(tmp_path, mutate)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gsm8k.jsonl").write_text('{"question": "q", "answer": "1 + 1 = 2\\n#### 2"}\n')
    plan = build_plan(load_sweep(path), path)
    curate = next(run for run in plan.runs() if run.stage == "curate" and run.config.corpus == "gsm8k")
    assert curate.config.corpus_config.source.paths == [str(tmp_path / "data" / "*.jsonl")]


def test_difficulty_control_of_a_verl_spec_needs_a_declared_length_cap(tmp_path):
    """difficulty: auto samples the base with the embedded engine; at a verl spec's 4,096-token
    responses that is refused in one line saying what to do, and runs at the declared cap."""
    path = _write(tmp_path, lambda d: d["probe"].update(spec="octothinker-v1"))  # toy-smoke: difficulty auto
    errors = validate_sweep(path)
    assert errors == ["probe.difficulty: auto samples the base with the embedded engine (CPU or one GPU), "
                      "16 responses per problem of up to 4,096 tokens (verl spec 'octothinker-v1'); set "
                      "probe.difficulty_max_response_length to a length it can afford (e.g. 512), or use "
                      "difficulty: fixed with the sets' difficulty levels"]
    result = _cli("plan", str(path), "--workspace", str(tmp_path / "ws"))
    assert result.returncode == 2 and result.stderr.strip().endswith("difficulty: fixed with the sets' difficulty levels")
    capped = _write(tmp_path, lambda d: d["probe"].update(spec="octothinker-v1", difficulty_max_response_length=64))
    assert validate_sweep(capped) == []
    measured_with = build_plan(load_sweep(capped), capped).problems.config.spec
    assert measured_with.max_response_length == 64 and measured_with.name == "octothinker-v1"
    # without a cap the selection measures with the probe's own spec, as before
    from pipelines.sweep import probe_spec

    smoke = load_sweep(TOY_SMOKE)
    assert build_plan(smoke, TOY_SMOKE).problems.config.spec == probe_spec(smoke, TOY_SMOKE)


def test_a_control_needs_the_embedded_engine_and_its_seeds_among_the_probes(tmp_path):
    def verl_control(d):
        d["probe"].update(spec="octothinker-v1", control="random_reward")

    errors = validate_sweep(_write(tmp_path, verl_control))
    assert ("probe.control: the random-reward control runs on the embedded engine, and spec "
            "'octothinker-v1' is for 'verl'") in errors
    errors = validate_sweep(_write(tmp_path, lambda d: d["probe"].update(control="random_reward", control_seeds=[7])))
    assert any(e.startswith("probe: ") and "control_seeds" in e for e in errors), errors
