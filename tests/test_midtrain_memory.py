"""midtrain.memory: the per-GPU estimate against the CPU allocator's measured peak for
the toy presets, the 3B/8B plans, and their refusal in validate / plan."""

import gc
import json
import sys

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from test_midtrain_train import megatron_env  # noqa: F401

from midtrain.memory import estimate_memory, parameters_per_rank, resolve_optimizer
from midtrain.model import build_gpt_model, seed_all
from midtrain.spec import preset
from midtrain.train import TrainConfig, make_weight_update

# The estimate against the measured peak, on every case below: 0.97-1.13 when written.
MARGIN = 0.15


def _allocations(nodes):
    for node in nodes:
        if node.tag == _EventType.Allocation:
            yield node.extra_fields
        yield from _allocations(node.children)


def measured_peak(spec, cfg: TrainConfig, steps: int = 2) -> tuple[int, list[float]]:
    """Peak bytes of live CPU tensors (torch's allocator, as its profiler counts them)
    while building the model and optimizer and taking `steps` training steps; and the
    losses."""
    gen = torch.Generator().manual_seed(0)
    micro_batches = []
    for _ in range(cfg.grad_accum):
        tokens = torch.randint(0, spec.vocab_size, (cfg.micro_batch_size, cfg.seq_length + 1),
                               generator=gen)
        micro_batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(),
                              torch.ones(cfg.micro_batch_size, cfg.seq_length)))
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        seed_all(0)
        gpt = build_gpt_model(spec, recompute_activations=cfg.recompute_activations)
        update = make_weight_update(gpt, cfg, resolve_optimizer(cfg.optimizer, cuda=False))
        losses = []
        for _ in range(steps):
            losses.append(update.accumulate(micro_batches))
            update.step(1e-3)
    allocations = list(_allocations(prof.profiler.kineto_results.experimental_event_tree()))
    # the allocator's running total, counted from this profile's first allocation
    start = allocations[0].total_allocated - allocations[0].alloc_size
    return max(a.total_allocated for a in allocations) - start, losses


CASES = [  # activations dominate at 8 x 256 tokens, weights and optimizer state at 1 x 16
    ("toy-xs", 8, 256, 1, "torch-adamw", False),
    pytest.param("toy-xs", 8, 256, 1, "torch-adamw", True, marks=pytest.mark.slow),
    pytest.param("toy-s", 8, 256, 1, "megatron-distributed", False, marks=pytest.mark.slow),
    pytest.param("toy-s", 8, 256, 1, "megatron-distributed", True, marks=pytest.mark.slow),
    pytest.param("toy-s", 1, 16, 2, "torch-adamw", False, marks=pytest.mark.slow),
    ("toy-s", 1, 16, 2, "megatron-distributed", False),
]


def measure_in_a_fresh_process(name: str, cfg: TrainConfig, steps: int = 2) -> dict:
    """`measured_peak` in its own process: what earlier runs left in this one (megatron's
    buffers, the profiler's running total) must not count."""
    import os
    import subprocess

    result = subprocess.run([sys.executable, __file__, name, cfg.model_dump_json(), str(steps)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1",
                                 "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name,micro_batch,seq,grad_accum,optimizer,recompute", CASES)
def test_estimate_matches_measured_cpu_peak(name, micro_batch, seq, grad_accum, optimizer,
                                            recompute):
    cfg = TrainConfig(tokens=1, micro_batch_size=micro_batch, seq_length=seq,
                      grad_accum=grad_accum, optimizer=optimizer, recompute_activations=recompute)
    estimate = estimate_memory(preset(name), cfg, nproc=1, cuda=False)
    peak = measure_in_a_fresh_process(name, cfg)["peak"]
    assert estimate.optimizer == optimizer and estimate.runtime_reserve == 0
    assert abs(estimate.total / peak - 1) < MARGIN, (estimate, peak)


@pytest.mark.slow
def test_recomputation_keeps_losses_and_saves_memory():
    cfg = TrainConfig(tokens=1, micro_batch_size=8, seq_length=256)
    full = measure_in_a_fresh_process("toy-s", cfg, steps=3)
    recomputed = measure_in_a_fresh_process(
        "toy-s", cfg.model_copy(update={"recompute_activations": True}), steps=3)
    assert recomputed["losses"] == full["losses"]  # the same forward, run twice
    assert recomputed["peak"] < 0.6 * full["peak"]


def test_parameters_per_rank():
    for name in ("toy-s", "llama-3.1-8b"):
        assert parameters_per_rank(preset(name), 1) == preset(name).num_parameters()
    gpt = build_gpt_model(preset("toy-xs"))
    assert sum(p.numel() for p in gpt.parameters()) == parameters_per_rank(preset("toy-xs"), 1)
    spec = preset("llama-3.1-8b")
    norms = spec.num_layers * 2 * spec.hidden_size + spec.hidden_size
    assert parameters_per_rank(spec, 2) - norms == (spec.num_parameters() - norms) // 2


def test_distributed_optimizer_shards_state_over_data_parallel_ranks():
    spec = preset("llama-3.1-8b")
    cfg = TrainConfig(tokens=1, seq_length=8192, micro_batch_size=1, bf16=True)
    n = spec.num_parameters()
    one = estimate_memory(spec, cfg, nproc=1)
    eight = estimate_memory(spec, cfg, nproc=8)
    assert one.optimizer == "megatron-distributed"  # auto, on a GPU
    assert (one.weights, one.grads, one.optimizer_state) == (2 * n, 4 * n, 12 * n)
    assert eight.optimizer_state == 12 * n // 8 and eight.weights == one.weights
    adamw = estimate_memory(spec, cfg.model_copy(update={"optimizer": "torch-adamw"}), nproc=8)
    assert (adamw.weights, adamw.grads, adamw.optimizer_state) == (4 * n, 4 * n, 8 * n)
    assert adamw.total > 1.6 * eight.total


def write_sweep(tmp_path, model: str, midtrain: dict):
    """The README's real-model sweep shape, with a base HF config of `model`."""
    base = tmp_path / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps(preset(model).to_hf_config()))
    # data that passes preflight (a readable corpus, problems with the probe's fields, a tokenizer)
    Tokenizer(WordLevel({"<unk>": 0, "1": 1}, unk_token="<unk>")).save(str(base / "tokenizer.json"))
    (tmp_path / "web.jsonl").write_text('{"id": "d1", "text": "1 + 1 = 2"}\n')
    problems = tmp_path / "problems.jsonl"
    problems.write_text('{"id": "1", "question": "1+1?", "answer": "2", "data_source": "toy"}\n')
    sweep = {
        "name": "real", "base": {"hf_path": str(base)},
        "corpora": {"web": {"source": {"type": "jsonl", "paths": [str(tmp_path / "web.jsonl")],
                                       "text_field": "text"}, "curation": {"preset": "math"}}},
        "recipes": {"a": {"stable": {"tokens": 2 * 10**10, "mix": {"web": 1.0}},
                          "decay": {"tokens": 2 * 10**9, "mix": {"web": 1.0}}}},
        "midtrain": midtrain,
        "probe": {"spec": "octothinker-v1", "train_set": {"path": str(problems)},
                  "eval_set": {"path": str(problems)}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(sweep))
    return path


def midprobe(*args):
    import subprocess

    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ,
                                                        "WANDB_MODE": "offline"})


README_3B = {"seq_length": 8192, "micro_batch_size": 1, "lr": 3.0e-5, "min_lr": 3.0e-6,
             "nproc_per_node": 8, "tensor_model_parallel_size": 2, "gpu_memory_gb": 80}


def test_plan_prints_the_3b_estimate_and_refuses_an_8b_that_cannot_fit(tmp_path):
    result = midprobe("plan", str(write_sweep(tmp_path / "3b", "llama-3.2-3b", README_3B)),
                      "-w", str(tmp_path / "ws"))
    assert result.returncode == 0, result.stderr
    line = [x for x in result.stdout.splitlines() if x.startswith("midtrain memory per GPU")]
    assert line and "megatron-distributed, tp 2 x dp 4" in line[0], result.stdout

    eight_b = {**README_3B, "tensor_model_parallel_size": 1, "bf16": True}
    sweep = write_sweep(tmp_path / "8b", "llama-3.1-8b", eight_b)
    result = midprobe("plan", str(sweep), "-w", str(tmp_path / "ws"))
    assert result.returncode == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "midtrain.gpu_memory_gb: the midtrain stages need an " \
        "estimated 111.6 GiB/GPU" in errors[0], result.stderr
    fitted = {**eight_b, "recompute_activations": True}
    result = midprobe("validate", str(write_sweep(tmp_path / "8b-fit", "llama-3.1-8b", fitted)))
    assert result.returncode == 0, result.stderr


if __name__ == "__main__":  # measure_in_a_fresh_process: name, TrainConfig JSON, steps
    from midtrain.model import init_distributed

    torch.set_num_threads(1)
    init_distributed()
    peak, losses = measured_peak(preset(sys.argv[1]), TrainConfig.model_validate_json(
        sys.argv[2]), int(sys.argv[3]))
    print(json.dumps({"peak": peak, "losses": losses}))
