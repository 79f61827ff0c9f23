"""midtrain.train on tiny synthetic Megatron corpora: learning, blending, resume, fork, NaN."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from safetensors.torch import load_file

from midtrain.checkpoint import latest_checkpoint
from midtrain.data import BlendPart, build_blend
from midtrain.model import init_distributed
from midtrain.spec import preset
from midtrain.train import TrainConfig, TrainingDivergedError, train

VOCAB = 64


@pytest.fixture(scope="module", autouse=True)
def megatron_env():
    torch.set_num_threads(1)
    init_distributed()


def write_corpus(prefix: str, n_docs: int, stride: int, seed: int) -> str:
    """Documents are arithmetic progressions of token ids (learnable) ending in EOS (0)."""
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for _ in range(n_docs):
        start, length = rng.integers(1, VOCAB), rng.integers(30, 120)
        doc = (start + stride * np.arange(length)) % (VOCAB - 1) + 1
        builder.add_item(torch.from_numpy(np.append(doc, 0).astype(np.int32)))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("corpus")
    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(
        root / "tok")
    blend = [
        BlendPart(name="ones", prefixes=[write_corpus(str(root / "ones"), 300, 1, 0)],
                  weight=0.3),
        BlendPart(name="threes", prefixes=[write_corpus(str(root / "threes_a"), 200, 3, 1),
                                           write_corpus(str(root / "threes_b"), 100, 3, 2)],
                  weight=0.7),
    ]
    return root / "tok", blend


SPEC = preset("toy-xs", vocab_size=VOCAB)


def config(**overrides) -> TrainConfig:
    base = dict(tokens=512 * 24, seq_length=64, micro_batch_size=4, grad_accum=2, lr=3e-3,
                min_lr=3e-4, warmup_tokens=512 * 4, eval_every_steps=12, eval_tokens=512)
    return TrainConfig(**{**base, **overrides})


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_loss_and_writes_artifacts(corpus, tmp_path):
    tokenizer, blend = corpus
    seen = []
    summary = train(SPEC, config(export_every_tokens=512 * 12, checkpoint_every_tokens=512 * 12),
                    blend, tmp_path, None, tokenizer, on_metrics=lambda s, d: seen.append(s))
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == seen == list(range(1, 25))
    assert metrics[-1]["data"]["train/loss"] < metrics[0]["data"]["train/loss"] - 1.0
    for key in ("train/loss", "train/lr", "train/tokens", "train/grad_norm",
                "perf/tokens_per_s", "val/ones/loss", "val/threes/loss"):
        assert key in metrics[-1]["data"]
    assert metrics[11]["data"]["val/ones/loss"] > summary["final"]["val/ones/loss"]
    assert summary["tokens"] == 24 * 512 and summary["steps"] == 24
    assert json.loads((tmp_path / "summary.json").read_text())["final"] == summary["final"]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "step_00000012", "step_00000024"]
    # the declared export; the end's is hf/
    assert sorted(p.name for p in (tmp_path / "hf_checkpoints").iterdir()) == ["6144"]
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert (tmp_path / "hf" / "tokenizer.json").exists()

    # Running a finished stage again only reloads the final checkpoint.
    again = train(SPEC, config(export_every_tokens=512 * 12, checkpoint_every_tokens=512 * 12),
                  blend, tmp_path, None, tokenizer)
    assert again["resumed_from_step"] == 24 and again["final"] == summary["final"]
    assert len(read_metrics(tmp_path)) == 24


def test_blend_share_matches_weights(corpus, tmp_path):
    _, blend = corpus
    data = build_blend(blend, seq_length=64, train_samples=5000, valid_samples=8,
                       valid_percent=2.0, seed=7, vocab_size=VOCAB, eod=0, cache_dir=tmp_path / "cache")
    parts = Counter(data.part_of_dataset[int(data.train[i]["dataset_id"])]
                    for i in range(len(data.train)))
    assert abs(parts[0] / len(data.train) - 0.3) < 0.02
    assert abs(parts[1] / len(data.train) - 0.7) < 0.02
    assert set(data.valid) == {"ones", "threes"}
    # megatron's index cache stays in the consuming run's directory, not beside the data
    assert any((tmp_path / "cache").iterdir())
    assert not any((Path(prefix).parent / "cache").exists() for part in blend for prefix in part.prefixes)


class Crash(Exception):
    pass


def test_resume_after_crash_is_bitwise_identical(corpus, tmp_path):
    tokenizer, blend = corpus
    cfg = config(checkpoint_every_tokens=512 * 8)
    train(SPEC, cfg, blend, tmp_path / "straight", None, tokenizer)

    def crash_after(crash_step):
        def on_metrics(step, _):
            if step == crash_step:
                raise Crash()
        return on_metrics

    # Once before the first checkpoint (a fresh restart), once after it (a resume).
    for crash_step in (3, 11):
        with pytest.raises(Crash):
            train(SPEC, cfg, blend, tmp_path / "resumed", None, tokenizer,
                  on_metrics=crash_after(crash_step))
    assert latest_checkpoint(tmp_path / "resumed" / "state").name == "step_00000008"
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:  # a writer killed mid-line
        f.write('{"step": 12, "data": {"train/lo')
    summary = train(SPEC, cfg, blend, tmp_path / "resumed", None, tokenizer)
    assert summary["resumed_from_step"] == 8

    straight = load_file(tmp_path / "straight" / "hf" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "hf" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    promise = {name: json.loads((tmp_path / name / "summary.json").read_text())["reproducibility"]
               for name in ("straight", "resumed")}
    assert promise["straight"] == promise["resumed"] and promise["straight"]["bitwise"]  # on CPU

    def losses(name):
        return [(m["step"], m["data"]["train/loss"]) for m in read_metrics(tmp_path / name)]
    assert losses("resumed") == losses("straight")


def test_decay_branch_forks_stable_run_and_hf_init(corpus, tmp_path):
    tokenizer, blend = corpus
    stable = train(SPEC, config(schedule="constant"), blend, tmp_path / "stable", None,
                   tokenizer)
    branch_cfg = config(schedule="linear-decay", warmup_tokens=0, tokens=512 * 6)
    train(SPEC, branch_cfg, blend[:1], tmp_path / "branch", tmp_path / "stable", tokenizer)
    branch = read_metrics(tmp_path / "branch")
    assert branch[0]["data"]["train/lr"] == pytest.approx(3e-3)
    assert branch[-1]["data"]["train/lr"] == pytest.approx(3e-4)
    # Forked weights: the first branch step already has the stable run's low loss.
    assert branch[0]["data"]["train/loss"] < stable["final"]["train/loss"] + 0.3

    train(SPEC, branch_cfg, blend[:1], tmp_path / "from_hf", tmp_path / "stable" / "hf",
          tokenizer)
    from_hf = read_metrics(tmp_path / "from_hf")
    # Same weights, fresh AdamW moments instead of the stable run's.
    assert from_hf[0]["data"]["train/loss"] == pytest.approx(branch[0]["data"]["train/loss"])
    assert from_hf[0]["data"]["train/grad_norm"] == pytest.approx(
        branch[0]["data"]["train/grad_norm"])
    assert from_hf[1]["data"]["train/loss"] != branch[1]["data"]["train/loss"]


def test_non_finite_loss_names_the_step_and_keeps_last_checkpoint(corpus, tmp_path):
    tokenizer, blend = corpus
    cfg = config(lr=1e4, min_lr=1e4, schedule="constant", warmup_tokens=0, clip_grad=0.0,
                 checkpoint_every_tokens=512)
    with pytest.raises(TrainingDivergedError) as err:
        train(SPEC, cfg, blend, tmp_path, None, tokenizer)
    last_logged = read_metrics(tmp_path)[-1]["step"]
    assert f"at step {last_logged + 1}:" in str(err.value)
    assert latest_checkpoint(tmp_path / "state").name == f"step_{last_logged:08d}"
    assert f"step_{last_logged:08d}" in str(err.value)


def test_corpus_too_small_for_validation_split_is_a_clear_error(tmp_path):
    part = BlendPart(name="tiny", prefixes=[write_corpus(str(tmp_path / "tiny"), 10, 1, 0)],
                     weight=1.0)
    with pytest.raises(ValueError, match="10 documents are too few"):
        build_blend([part], seq_length=64, train_samples=10, valid_samples=4, valid_percent=2.0,
                    seed=1, vocab_size=VOCAB, eod=0, cache_dir=tmp_path / "cache")


def test_parallel_sizes_validate_and_unsupported_settings_are_refused(corpus, tmp_path):
    from pydantic import ValidationError

    from midtrain.config import check_parallel_layout

    assert config(tensor_model_parallel_size=2).tensor_model_parallel_size == 2
    with pytest.raises(ValueError):
        config(tensor_model_parallel_size=0)
    assert check_parallel_layout(8, 2, 2) == 2
    with pytest.raises(ValueError, match="6 processes do not split into "
                                         "tensor_model_parallel_size 2 x "
                                         "pipeline_model_parallel_size 2 = 4"):
        check_parallel_layout(6, 2, 2)
    with pytest.raises(ValidationError, match="set midtrain.pipeline_model_parallel_size to 1 "
                                              r"\(got 2\)"):
        config(pipeline_model_parallel_size=2)
    tokenizer, blend = corpus
    # This one-rank process cannot host a tp=2 model replica, nor bf16 without a GPU.
    with pytest.raises(ValueError, match="1 processes do not split"):
        train(SPEC, config(tensor_model_parallel_size=2), blend, tmp_path, None, tokenizer)
    with pytest.raises(ValueError, match="midtrain.bf16 needs a GPU"):
        train(SPEC, config(bf16=True), blend, tmp_path, None, tokenizer)
    assert not (tmp_path / "state").exists()


def _weights(run_dir: Path) -> dict:
    return load_file(run_dir / "hf" / "model.safetensors")


def _losses(summary: dict) -> dict:
    """The final metrics that depend on the weights (not the timing ones)."""
    return {name: value for name, value in summary["final"].items() if not name.startswith("perf/")}


def test_retention_keeps_the_newest_states_and_a_run_nothing_continues_keeps_none(corpus, tmp_path):
    """keep_states bounds the training states on disk; a run no decay branch continues leaves
    its HF export only, and running it again returns its summary without training."""
    tokenizer, blend = corpus
    cfg = config(checkpoint_every_tokens=512 * 4, keep_states=2)  # six states over 24 steps
    kept = train(SPEC, cfg, blend, tmp_path / "kept", None, tokenizer)
    assert sorted(p.name for p in (tmp_path / "kept" / "state").iterdir()) == [
        "step_00000020", "step_00000024"]
    assert not (tmp_path / "kept" / "hf_checkpoints").exists()  # none declared

    dropped = train(SPEC, cfg, blend, tmp_path / "dropped", None, tokenizer, keep_final_state=False)
    assert not any((tmp_path / "dropped" / "state").iterdir())
    assert _losses(dropped) == _losses(kept)
    assert all(torch.equal(a, b) for a, b in zip(_weights(tmp_path / "kept").values(),
                                                  _weights(tmp_path / "dropped").values()))
    logged = (tmp_path / "dropped" / "metrics.jsonl").read_text()
    assert train(SPEC, cfg, blend, tmp_path / "dropped", None, tokenizer,
                 keep_final_state=False) == dropped
    assert (tmp_path / "dropped" / "metrics.jsonl").read_text() == logged


def test_a_run_killed_while_deleting_its_states_resumes_or_is_finished(corpus, tmp_path):
    """States are renamed out of `step_*` before they are deleted, oldest first, and after the
    summary: a kill at any point leaves either the final state to resume from or a finished run."""
    tokenizer, blend = corpus
    cfg = config(checkpoint_every_tokens=512 * 12)
    straight = train(SPEC, cfg, blend, tmp_path / "straight", None, tokenizer, keep_final_state=False)
    run = tmp_path / "killed"
    train(SPEC, cfg, blend, run, None, tokenizer)  # both states kept: the kill comes before the prune
    # killed after renaming the older state: the final one is the resume point
    (run / "state" / "step_00000012").rename(run / "state" / ".step_00000012.deleted")
    assert latest_checkpoint(run / "state").name == "step_00000024"
    resumed = train(SPEC, cfg, blend, run, None, tokenizer, keep_final_state=False)
    assert resumed["resumed_from_step"] == 24 and _losses(resumed) == _losses(straight)
    assert not any((run / "state").iterdir())

    # killed after renaming the final state too: the summary says it finished
    (run / "state" / ".step_00000024.deleted").mkdir()
    assert train(SPEC, cfg, blend, run, None, tokenizer, keep_final_state=False) == resumed
    assert not any((run / "state").iterdir())
