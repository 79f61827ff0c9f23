"""torchrun gloo data parallelism gives the same loss trajectory as one process."""

import json
import os
import subprocess
import sys

import pytest

from test_midtrain_train import SPEC, config, corpus, megatron_env, read_metrics  # noqa: F401

from midtrain.train import TrainJob


def run_job(tmp_path, name, tokenizer, blend, nproc, **overrides):
    job = TrainJob(model=SPEC, config=config(tokens=512 * 10, eval_every_steps=5, **overrides),
                   blend=blend, out_dir=tmp_path / name, tokenizer_dir=tokenizer)
    job_file = tmp_path / f"{name}.json"
    job_file.write_text(job.model_dump_json())
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                 "--master_port", "0", "-m", "midtrain.train"] if nproc > 1
                else [sys.executable, "-m", "midtrain.train"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run([*launcher, str(job_file)], check=True, env=env, timeout=300,
                   capture_output=True)
    return read_metrics(tmp_path / name)


@pytest.mark.timeout(600)
def test_two_rank_data_parallel_matches_gradient_accumulation(corpus, tmp_path):
    tokenizer, blend = corpus
    # Same global batch: one process accumulating 2 micro batches of 4, or two ranks
    # with one micro batch of 4 each, reading the same samples.
    single = run_job(tmp_path, "single", tokenizer, blend, 1, micro_batch_size=4, grad_accum=2)
    dp = run_job(tmp_path, "dp", tokenizer, blend, 2, micro_batch_size=4, grad_accum=1)
    assert [m["step"] for m in dp] == [m["step"] for m in single] == list(range(1, 11))
    for a, b in zip(single, dp):
        for key in ("train/loss", "train/grad_norm", "val/ones/loss", "val/threes/loss"):
            if key in a["data"]:
                assert b["data"][key] == pytest.approx(a["data"][key], rel=1e-4, abs=1e-5), key
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens"] == 512 * 10
