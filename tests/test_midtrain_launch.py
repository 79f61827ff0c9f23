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
