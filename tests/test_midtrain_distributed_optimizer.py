"""midtrain.optimizer megatron-distributed (megatron-core DDP + DistributedOptimizer) on
CPU: as far as it runs without CUDA (fp32, gloo), against the torch AdamW path."""

import pytest
import torch

from test_midtrain_launch import assert_same_trajectory, hf_weights, torchrun, write_job
from test_midtrain_train import SPEC, config, corpus, megatron_env, read_metrics  # noqa: F401

from midtrain.checkpoint import latest_checkpoint, saved_optimizer_kind
from midtrain.memory import resolve_optimizer
from midtrain.train import TrainJob, train

DISTRIBUTED = dict(optimizer="megatron-distributed")


def test_auto_resolves_by_device():
    assert resolve_optimizer("auto", cuda=True) == "megatron-distributed"
    assert resolve_optimizer("auto", cuda=False) == "torch-adamw"
    assert resolve_optimizer("torch-adamw", cuda=True) == "torch-adamw"
    assert config().optimizer == "auto"


@pytest.fixture(scope="module")
def adamw_and_distributed(corpus, tmp_path_factory):
    """The same 12 steps with torch's AdamW and with megatron's distributed optimizer."""
    tokenizer, blend = corpus
    root = tmp_path_factory.mktemp("dist_opt")
    cfg = config(tokens=512 * 12, checkpoint_every_tokens=512 * 6)
    for optimizer in ("torch-adamw", "megatron-distributed"):
        train(SPEC, cfg.model_copy(update={"optimizer": optimizer}), blend, root / optimizer,
              None, tokenizer)
    return root


def test_distributed_optimizer_follows_torch_adamw(adamw_and_distributed):
    # Same AdamW arithmetic on fp32 main weights; only reduction order differs.
    adamw = read_metrics(adamw_and_distributed / "torch-adamw")
    distributed = read_metrics(adamw_and_distributed / "megatron-distributed")
    assert_same_trajectory(adamw, distributed, rel=1e-6)
    a, b = hf_weights(adamw_and_distributed / "torch-adamw"), hf_weights(
        adamw_and_distributed / "megatron-distributed")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    ckpt = latest_checkpoint(adamw_and_distributed / "megatron-distributed" / "state")
    assert saved_optimizer_kind(ckpt) == "megatron-distributed"


class Crash(Exception):
    pass


def test_distributed_optimizer_resumes_bitwise(adamw_and_distributed, corpus, tmp_path):
    tokenizer, blend = corpus
    cfg = config(tokens=512 * 12, checkpoint_every_tokens=512 * 6, **DISTRIBUTED)

    def crash_at_9(step, _):
        if step == 9:
            raise Crash()
    with pytest.raises(Crash):
        train(SPEC, cfg, blend, tmp_path, None, tokenizer, on_metrics=crash_at_9)
    summary = train(SPEC, cfg, blend, tmp_path, None, tokenizer)
    assert summary["resumed_from_step"] == 6 and summary["optimizer"] == "megatron-distributed"
    straight = adamw_and_distributed / "megatron-distributed"
    def trajectory(out_dir):
        return [(m["step"], m["data"]["train/loss"], m["data"]["train/grad_norm"])
                for m in read_metrics(out_dir)]
    assert trajectory(tmp_path) == trajectory(straight)
    assert all(torch.equal(hf_weights(straight)[k], w) for k, w in hf_weights(tmp_path).items())


def test_decay_branch_forks_distributed_optimizer_state(adamw_and_distributed, corpus, tmp_path):
    tokenizer, blend = corpus
    branch = config(schedule="linear-decay", warmup_tokens=0, tokens=512 * 3, **DISTRIBUTED)
    train(SPEC, branch, blend, tmp_path / "fork", adamw_and_distributed / "megatron-distributed",
          tokenizer)
    train(SPEC, branch, blend, tmp_path / "hf", adamw_and_distributed / "megatron-distributed"
          / "hf", tokenizer)
    fork, from_hf = read_metrics(tmp_path / "fork"), read_metrics(tmp_path / "hf")
    # the same weights at step 1 (the HF init reached the fp32 main weights), then
    # the forked AdamW moments make the difference
    assert fork[0]["data"]["train/loss"] == pytest.approx(from_hf[0]["data"]["train/loss"])
    assert fork[1]["data"]["train/loss"] != from_hf[1]["data"]["train/loss"]
    with pytest.raises(ValueError, match="holds megatron-distributed optimizer state; this run "
                                         "uses midtrain.optimizer torch-adamw"):
        train(SPEC, branch.model_copy(update={"optimizer": "torch-adamw"}), blend,
              tmp_path / "mismatch", adamw_and_distributed / "megatron-distributed", tokenizer)


@pytest.mark.timeout(600)
def test_two_rank_distributed_optimizer_shards_state(adamw_and_distributed, corpus, tmp_path):
    """Two data-parallel ranks, each holding half of the optimizer state, follow the
    one-rank run that accumulates the same global batch."""
    tokenizer, blend = corpus
    cfg = config(tokens=512 * 12, checkpoint_every_tokens=512 * 6, grad_accum=1, **DISTRIBUTED)
    torchrun("-m", "midtrain.train", str(write_job(tmp_path / "job.json", TrainJob(
        model=SPEC, config=cfg, blend=blend, out_dir=tmp_path / "dp2",
        tokenizer_dir=tokenizer))))
    assert_same_trajectory(read_metrics(adamw_and_distributed / "megatron-distributed"),
                           read_metrics(tmp_path / "dp2"), rel=1e-4)
    # each rank wrote its own shard of the fp32 main weights and moments
    ckpt = latest_checkpoint(tmp_path / "dp2" / "state")
    assert saved_optimizer_kind(ckpt) == "megatron-distributed"
