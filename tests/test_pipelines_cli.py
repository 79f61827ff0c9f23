"""CLI commands over stage-package functions: convert and train-classifier."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from data_recipes.toyworld import ToyWorld

ENV = {**os.environ, "WANDB_MODE": "offline"}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=300, env=ENV)


def test_convert_round_trip_through_the_cli_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    to_megatron = _cli("convert", str(tmp_path / "hf"), str(tmp_path / "mc"), "--to", "megatron")
    assert to_megatron.returncode == 0, to_megatron.stderr[-2000:]
    back = _cli("convert", str(tmp_path / "mc"), str(tmp_path / "hf2"), "--to", "hf")
    assert back.returncode == 0, back.stderr[-2000:]
    original, converted = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
    assert original.keys() == converted.keys()
    assert all(torch.equal(original[k], converted[k]) for k in original)
    assert not list(tmp_path.glob(".*.partial"))

    again = _cli("convert", str(tmp_path / "hf"), str(tmp_path / "mc"), "--to", "megatron")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_train_classifier_command(tmp_path):
    world = ToyWorld()
    rows = [{"text": d["text"], "label": "math"} for d in world.documents("mathweb", 150)]
    rows += [{"text": d["text"], "label": "other"} for d in world.documents("web", 150)]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _cli("train-classifier", str(labelled), str(tmp_path / "math.bin"))
    assert result.returncode == 0, result.stderr[-2000:]
    accuracy = float(result.stdout.split("held-out accuracy ")[1].split()[0])
    assert accuracy >= 0.9 and (tmp_path / "math.bin").is_file()
    bad = _cli("train-classifier", str(labelled), str(tmp_path / "x.bin"), "--label-field", "kind")
    assert bad.returncode == 2 and str(labelled) in bad.stderr


def test_status_finds_the_workspace_a_sweep_sets(tmp_path, monkeypatch):
    import yaml

    from pipelines.store import RunStore, StageRun
    from pipelines.sweep import bundled_sweep

    sweep = yaml.safe_load(bundled_sweep("toy-smoke").read_text())
    sweep["workspace"] = str(tmp_path / "elsewhere")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    store = RunStore(tmp_path / "elsewhere")
    run = StageRun("tokenizer", {"vocab_size": 7}, label="tokenizer")
    store.set_members(sweep["name"], {run: [{"kind": "tokenizer"}]})
    store.execute(run, lambda out: None)
    monkeypatch.chdir(tmp_path)  # no ./midprobe-runs here: only the sweep says where its workspace is
    result = _cli("status", "sweep.yaml")
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "elsewhere") in result.stdout and run.key[:10] in result.stdout
    assert _cli("status").returncode == 2  # no sweep given: ./midprobe-runs, which is not a workspace


def test_status_shows_a_running_probes_step_reward_pace_and_time_left(tmp_path):
    from pipelines.store import RunStore, StageRun

    store = RunStore(tmp_path / "ws")
    run = StageRun("probe", {"spec": {"steps": 8}, "seed": 0}, label="probe base seed 0")
    store.mark_submitted(run)  # running for this (live) process
    worker = RunStore(tmp_path / "ws", index=False)  # a worker leaves its metrics in the run's directory
    worker.partial_path(run).mkdir(parents=True)
    worker.record_metrics(run, 0, {"val-core/x/acc/mean@1": 0.2})
    worker.record_metrics(run, 3, {"critic/score/mean": 0.25, "timing_s/step": 24.0})
    result = _cli("status", "-w", str(tmp_path / "ws"))
    assert result.returncode == 0, result.stderr
    assert "step 3/8 · reward 0.250 · 24.0 s/step · 2.0 min left" in " ".join(result.stdout.split())


def test_probe_device_is_checked_first_and_keys_only_probes_off_the_cpu(tmp_path):
    from pipelines.plan import build_checkpoint_plan
    from pipelines.sweep import ExecutorSection, ProblemSet
    from rl_probe.spec import get_probe_spec

    for device, message in (("tpu", "'tpu' is not a device"), ("cuda:7", "'cuda:7': torch sees")):
        result = _cli("probe", str(tmp_path / "ckpt"), "--toy", "--spec", "toy-smoke-v1", "--device", device,
                      "-w", str(tmp_path / "ws"))
        assert result.returncode == 2 and f"--device: {message}" in result.stderr, result.stderr
    assert not (tmp_path / "ws").exists()

    def probe_keys(**device):
        plan = build_checkpoint_plan("job", {"a": tmp_path}, get_probe_spec("toy-smoke-v1"), [0],
                                     ProblemSet(toy_split="probe", n=8), ProblemSet(toy_split="eval", n=8),
                                     ExecutorSection(), **device)
        return {run.label: run.key for run in plan.probes.values()}

    assert probe_keys(device="cpu") == probe_keys()  # the keys of before
    assert probe_keys(device="cuda").keys() == probe_keys().keys()
    assert set(probe_keys(device="cuda").values()).isdisjoint(probe_keys().values())
