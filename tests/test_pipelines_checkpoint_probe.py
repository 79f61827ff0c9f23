"""`midprobe probe` over HF checkpoints made outside midprobe, with no sweep file."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from data_recipes.toyworld import ToyWorld, ToyWorldConfig
from data_recipes.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    world = ToyWorld(ToyWorldConfig())
    texts = [d["text"] for kind in ("web", "qa_cot") for d in world.documents(kind, 300)]
    tokenizer_dir = root / "tokenizer"
    train_tokenizer(iter(texts), 512, tokenizer_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    dirs = []
    for i in range(2):  # two "training steps" of somebody else's run
        torch.manual_seed(i)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                             eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                             tie_word_embeddings=True)
        path = root / "run7" / f"step_{i * 100}"
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs.append(path)
    return root, dirs


def test_probe_external_checkpoints_by_glob(checkpoints, tmp_path):
    root, dirs = checkpoints
    workspace = tmp_path / "ws"
    # a user-defined spec: a shipped one with a field replaced
    cmd = [sys.executable, "-m", "pipelines.cli", "probe", str(root / "run7" / "step_*"), "--spec", "toy-smoke-v1",
           "--set", "max_response_length=10", "--toy", "--seeds", "0,1", "--name", "run7",
           "--workspace", str(workspace)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "WANDB_MODE": "offline", "MIDPROBE_WANDB": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = workspace / "reports" / "run7" / "report.md"
    assert result.stdout.strip().splitlines()[-1] == str(report.with_suffix(".html"))
    ranking = report.read_text().split("## Ranking", 1)[1].split("## Probe", 1)[0]
    assert "step_0" in ranking and "step_100" in ranking
    assert "probe spec **toy-smoke-v1+max_response_length**" in report.read_text()
    assert ("Prompts longer than the spec's max_prompt_length (64 tokens) are left out of training and evaluation "
            "alike: train 0 of 512 dropped, eval 0 of 128 dropped.") in report.read_text()
    # finished probes keep no resume state (no --keep-policy: no policy either)
    assert not list(workspace.glob("probe/*/state")) and not list(workspace.glob("probe/*/policy"))
    assert len(list(workspace.glob("probe/*/manifest.json"))) == 4  # 2 checkpoints x 2 seeds

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "WANDB_MODE": "offline", "MIDPROBE_WANDB": "0"})
    assert again.returncode == 0 and "▶" not in again.stderr  # every probe reused


def test_probe_rejects_a_directory_that_is_not_a_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "probe", str(tmp_path), "--toy",
                             "--spec", "toy-smoke-v1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{tmp_path}: not an HF checkpoint directory (config.json missing)"


def test_probe_asks_for_a_spec(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "probe", str(tmp_path), "--toy"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("--spec: give a probe spec, a shipped name (")


def test_checkpoints_are_labelled_by_what_tells_their_paths_apart(tmp_path):
    from pipelines.cli import _checkpoint_dirs

    def checkpoint(path, manifest=None):
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        if manifest:  # a midprobe midtrain run: the HF export sits in hf/ beside the manifest
            (path.parent / "manifest.json").write_text(manifest)
        return path

    for run in ("run7", "run8"):
        checkpoint(tmp_path / "ckpts" / run / "final")
    checkpoint(tmp_path / "ws" / "midtrain" / "3f9a0c1d2e4b5a69" / "hf",
               '{"stage": "midtrain", "key": "3f9a0c1d2e4b5a69", "label": "midtrain qa_cot decay"}')
    labels = _checkpoint_dirs([str(tmp_path / "ckpts" / "*" / "final"), str(tmp_path / "ws" / "midtrain" / "*")])
    assert sorted(labels) == ["qa_cot decay · midtrain/3f9a0c1d2e", "run7/final", "run8/final"]
    assert labels["run8/final"] == tmp_path / "ckpts" / "run8" / "final"
    assert list(_checkpoint_dirs([str(tmp_path / "ckpts" / "run7" / "final")])) == ["final"]
