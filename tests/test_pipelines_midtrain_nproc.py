"""A sweep's mid-training in several processes: `midtrain.nproc_per_node` launches the
midtrain stage under torchrun (tensor or data parallel), validated and keyed by the sweep."""

import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from pipelines.errors import StageFailed
from pipelines.execute import STAGE_LOG, Runtime, captured_output, execute_stage_run
from pipelines.plan import build_plan
from pipelines.stages import STAGES, StageContext
from pipelines.store import RunStore
from pipelines.sweep import bundled_sweep
from pipelines.preflight import load_sweep, validate_sweep

SMOKE = bundled_sweep("toy-smoke")


def _sweep(tmp_path: Path, pretrain_tokens: int = 4096, **midtrain) -> Path:
    """toy-smoke cut to what one base pretraining needs: one small corpus and a few steps."""
    data = yaml.safe_load(SMOKE.read_text())
    data["corpora"] = {"web": {**data["corpora"]["web"], "source": {"type": "toy", "kind": "web", "docs": 300}}}
    data["tokenizer"]["train_on"] = ["web"]
    data["base"]["pretrain"]["tokens"] = pretrain_tokens
    data["recipes"] = {"control": {"stable": {"tokens": 2048, "mix": {"web": 1.0}}}}
    data["midtrain"].update(midtrain)
    path = tmp_path / f"sweep-{len(list(tmp_path.glob('sweep-*')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base_run(tmp_path: Path, **overrides):
    path = _sweep(tmp_path, **overrides)
    plan = build_plan(load_sweep(path), path)
    return plan, plan.base


@pytest.fixture(scope="module", autouse=True)
def no_wandb():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIDPROBE_WANDB", "0")  # stage workers started here inherit it
        yield


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Problems, tokenizer and curated corpus, which do not depend on the midtrain settings."""
    root = tmp_path_factory.mktemp("nproc")
    plan, base = _base_run(root)
    runtime = Runtime(str(root / "ws"), plan.name)
    for run in plan.runs()[:plan.runs().index(base)]:  # dependencies come first
        execute_stage_run(run, runtime)
    return root


def test_nproc_must_be_a_multiple_of_the_model_parallel_size(tmp_path):
    errors = validate_sweep(_sweep(tmp_path, nproc_per_node=3, tensor_model_parallel_size=2))
    assert errors == ["midtrain.nproc_per_node: 3 processes do not split into tensor_model_parallel_size 2 "
                      "x pipeline_model_parallel_size 1 = 2; launch a positive multiple of 2 processes"]
    assert validate_sweep(_sweep(tmp_path, nproc_per_node=0))[0].startswith("midtrain.nproc_per_node: 0 ")
    assert validate_sweep(_sweep(tmp_path, nproc_per_node=4, tensor_model_parallel_size=2)) == []


def test_default_nproc_leaves_keys_unchanged_and_more_processes_change_midtrain_keys(tmp_path):
    def keys(**midtrain):
        plan, _ = _base_run(tmp_path, **midtrain)
        return {run.label: run.key for run in plan.runs()}

    absent, default, two = keys(), keys(nproc_per_node=1), keys(nproc_per_node=2)
    assert default == absent
    changed = {label for label in absent if two[label] != absent[label]}
    # the midtrain stages and everything downstream of them; the data stages are shared
    assert {"pretrain base (toy-xs)", "midtrain control stable"} <= changed
    assert not any(label.startswith(("curate", "tokenizer", "probe/eval")) for label in changed)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("tp", [2, 1], ids=["tp2", "dp2"])
def test_midtrain_stage_trains_in_two_processes(workspace, tp, monkeypatch):
    """The base's pretraining as two torchrun ranks, tensor parallel (tp=2) or data parallel
    (dp=2): it publishes an HF export that transformers loads, and the store holds its
    metrics as they were forwarded while it ran (the re-read on publish is switched off)."""
    from transformers import AutoModelForCausalLM

    plan, base = _base_run(workspace, nproc_per_node=2, tensor_model_parallel_size=tp)
    monkeypatch.setattr(RunStore, "ingest_metrics", lambda self, run: None)
    path, reused = execute_stage_run(base, Runtime(str(workspace / "ws"), plan.name, threads=2))
    out = Path(path)
    assert not reused

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world_size"], summary["tensor_model_parallel_size"]) == (2, tp)
    assert summary["config"]["threads"] == 1  # two processes share the stage's two threads
    dp = 2 // tp  # data-parallel replicas multiply the global batch of 8 x 128 tokens
    assert summary["tokens_per_step"] == 1024 * dp

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 4096 // (1024 * dp) + 1))
    stored = RunStore(workspace / "ws").metrics("midtrain", base.key)
    for name in ("train/loss", "val/web/loss", "train/grad_norm"):
        assert stored[name] == [(r["step"], r["data"][name]) for r in records if name in r["data"]]

    model = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    tokens = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=tokens).logits).all()


@pytest.mark.timeout(120)
def test_failed_torchrun_fails_the_stage_with_the_ranks_error(workspace, tmp_path):
    """A rank that dies (here: a corpus file gone from under the stage) fails the stage with
    the rank's error, not torchrun's report; the whole output is in the stage log."""
    plan, base = _base_run(workspace, nproc_per_node=2, tensor_model_parallel_size=2)
    store = RunStore(workspace / "ws")
    inputs = {role: store.path(dep) for role, dep in base.inputs.items()}
    inputs["corpus:web"] = tmp_path / "web"
    shutil.copytree(store.path(base.inputs["corpus:web"]), inputs["corpus:web"])
    for data in inputs["corpus:web"].glob("megatron/*.bin"):
        data.unlink()
    out = tmp_path / "out"
    out.mkdir()

    with pytest.raises(StageFailed) as failed, captured_output(out / STAGE_LOG):
        STAGES["midtrain"](base, inputs, out, StageContext(on_metrics=lambda step, data: None, threads=2))
    message = str(failed.value)
    assert message.startswith("torchrun (2 processes) exited with code 1; last output:\n")
    assert message.count("\n") <= 12 and "FileNotFoundError: blend part 'web'" in message
    assert "ChildFailedError" in (out / STAGE_LOG).read_text()  # torchrun's report, in the log


@pytest.mark.timeout(240)
def test_killed_torchrun_stage_resumes_from_its_checkpoints(workspace):
    """kill -9 of the stage's worker takes torchrun and its ranks down with it (no training
    left running); the next attempt resumes from the checkpoints in the partial directory."""
    plan, base = _base_run(workspace, pretrain_tokens=1024 * 40, nproc_per_node=2,
                           tensor_model_parallel_size=2, checkpoint_every_tokens=1024 * 8)
    runtime = Runtime(str(workspace / "ws"), plan.name)
    store = RunStore(workspace / "ws")
    worker = multiprocessing.get_context("spawn").Process(target=execute_stage_run, args=(base, runtime))
    worker.start()
    state = store.partial_path(base) / "state"
    deadline = time.time() + 120
    while not list(state.glob("step_*")):
        if not worker.is_alive() or time.time() > deadline:
            worker.kill()
            pytest.fail("the stage wrote no checkpoint to be killed after")
        time.sleep(0.05)
    training = psutil.Process(worker.pid).children(recursive=True)  # torchrun and its ranks
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    _, alive = psutil.wait_procs(training, timeout=60)
    assert not alive
    assert not (state / "step_00000040").exists(), "training went on after its worker died"

    execute_stage_run(base, runtime)
    summary = json.loads((store.path(base) / "summary.json").read_text())
    assert 8 <= summary["resumed_from_step"] < 40
    steps = [json.loads(line)["step"] for line in (store.path(base) / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
