"""midtrain launched as its own processes: torchrun data parallelism and kill -9 resume."""

import json
import os
import subprocess
import sys

import pytest

from test_midtrain_train import SPEC, config, corpus, megatron_env, read_metrics  # noqa: F401

from midtrain.train import TrainJob, train


@pytest.mark.timeout(600)
def test_two_rank_data_parallel_matches_gradient_accumulation(corpus, tmp_path):
    tokenizer, blend = corpus
    # Same global batch of 8 samples: one process accumulating 2 micro batches of 4,
    # or two ranks with one micro batch of 4 each, reading the same samples.
    cfg = config(tokens=512 * 10, eval_every_steps=5)
    train(SPEC, cfg, blend, tmp_path / "single", None, tokenizer)
    job = TrainJob(model=SPEC, config=cfg.model_copy(update={"grad_accum": 1}), blend=blend,
                   out_dir=tmp_path / "dp", tokenizer_dir=tokenizer)
    (tmp_path / "dp.json").write_text(job.model_dump_json())
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "midtrain.train", str(tmp_path / "dp.json")],
        check=True, timeout=300, capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})

    single, dp = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "dp")
    assert [m["step"] for m in dp] == [m["step"] for m in single] == list(range(1, 11))
    for a, b in zip(single, dp):
        for key in ("train/loss", "train/grad_norm", "val/ones/loss", "val/threes/loss"):
            if key in a["data"]:
                assert b["data"][key] == pytest.approx(a["data"][key], rel=1e-4, abs=1e-5), key
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens"] == 512 * 10


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_then_resume_is_bitwise_identical(corpus, tmp_path):
    import signal
    import time

    import torch
    from safetensors.torch import load_file

    from midtrain.checkpoint import latest_checkpoint

    tokenizer, blend = corpus
    cfg = config(tokens=512 * 160, checkpoint_every_tokens=512 * 20, eval_every_steps=40)
    train(SPEC, cfg, blend, tmp_path / "straight", None, tokenizer)

    job = TrainJob(model=SPEC, config=cfg, blend=blend, out_dir=tmp_path / "killed",
                   tokenizer_dir=tokenizer)
    (tmp_path / "killed.json").write_text(job.model_dump_json())
    command = [sys.executable, "-m", "midtrain.train", str(tmp_path / "killed.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "state"
    while not (state / "step_00000040").exists():
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert latest_checkpoint(state).name != "step_00000160"
    subprocess.run(command, env=env, check=True, timeout=600, capture_output=True)

    straight = load_file(tmp_path / "straight" / "hf" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "hf" / "model.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 40


TP_LOSS_SCRIPT = """
import json, sys
import torch
from midtrain.checkpoint import load_checkpoint
from midtrain.model import build_gpt_model, init_distributed
from midtrain.spec import ModelSpec

if __name__ == "__main__":
    ckpt, batch_file, out = sys.argv[1:]
    rank, _ = init_distributed(tensor_model_parallel_size=2)
    model = build_gpt_model(ModelSpec.model_validate_json(open(ckpt + "/model_spec.json").read()))
    load_checkpoint(ckpt, model, None)  # dist_checkpointing reshards the tp=1 weights
    text = torch.load(batch_file)
    loss = model(text[:, :-1], None, None, labels=text[:, 1:]).mean()
    loss.backward()
    if rank == 0:
        json.dump({"loss": loss.item(), "rank_params": sum(p.numel() for p in model.parameters())},
                  open(out, "w"))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tensor_parallel_model_matches_single_rank_loss(tmp_path):
    """megatron's local-spec layers run sharded over tp=2 on gloo and give the tp=1 loss
    from the same weights (the training loop itself still refuses tp > 1)."""
    import torch

    from midtrain.checkpoint import save_checkpoint
    from midtrain.model import build_gpt_model, seed_all

    seed_all(0)
    model = build_gpt_model(SPEC)
    ckpt = save_checkpoint(tmp_path / "state", 0, model, SPEC, None, {})
    text = torch.randint(0, SPEC.vocab_size, (4, 65), generator=torch.Generator().manual_seed(0))
    torch.save(text, tmp_path / "batch.pt")
    single = model(text[:, :-1], None, None, labels=text[:, 1:]).mean().item()
    (tmp_path / "tp_loss.py").write_text(TP_LOSS_SCRIPT)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "tp_loss.py"), str(ckpt), str(tmp_path / "batch.pt"),
         str(tmp_path / "tp.json")],
        check=True, timeout=300, capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    result = json.loads((tmp_path / "tp.json").read_text())
    assert result["loss"] == pytest.approx(single, rel=1e-5)
    assert result["rank_params"] < sum(p.numel() for p in model.parameters())
