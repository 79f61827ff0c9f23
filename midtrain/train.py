"""Continued pretraining of a Llama-style megatron-core GPTModel on a weighted blend.

Run it from a script with an `if __name__ == "__main__":` guard: megatron's
dist_checkpointing starts a spawn-context process that re-imports `__main__`.

Parallelism. Launch `torchrun --nproc_per_node N -m midtrain.train job.json`
(on Slurm, one torchrun per node with `--nnodes`, `--node_rank` and a shared
`--rdzv_endpoint`); gloo on CPU, NCCL on GPU with the device `LOCAL_RANK` names
(the GPU path has not run on this project's CPU-only machine). megatron's
`initialize_model_parallel` splits the N ranks into tensor-parallel groups of
`TrainConfig.tensor_model_parallel_size` (each holds one model replica, its layers
sharded by `build_gpt_model`) and data-parallel groups of N / tp ranks with the
same tensor-parallel rank. The ranks of a tensor-parallel group read the same
micro batches; data-parallel replicas read their own micro batches of the global
batch and average gradients over their data-parallel group. The gradient norm
for clipping counts sharded tensors on every rank and replicated ones once.
HF init slices full weights into each rank's shards, and HF exports gather them
(`midtrain.convert`); dist checkpoints are sharded, so a run resumes with the
same tp and can be read at any tp. Pipeline parallelism is refused (see
`TrainConfig`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from megatron.core import parallel_state
from pydantic import BaseModel

from midtrain import checkpoint, cpu_compat
from midtrain.convert import export_hf, import_hf, load_megatron_weights
from midtrain.data import BlendPart, build_blend, collate
from midtrain.memory import resolve_optimizer
from midtrain.model import build_gpt_model, init_distributed, micro_loss, seed_all
from midtrain.optim import make_weight_update
from midtrain.config import TrainConfig, interval_steps, is_hf_dir
from midtrain.reproducibility import reproducibility
from midtrain.schedule import learning_rate
from midtrain.spec import ModelSpec
from runfiles import METRICS_FILE, append_metrics, atomic_write, keep_metrics_through

MetricsCallback = Callable[[int, dict], None]


class TrainingDivergedError(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def _resolve_init(init: Path) -> tuple[str, Path]:
    """('hf', dir) for an HF model, ('megatron', checkpoint dir) for a midtrain run or
    a converted checkpoint."""
    init = Path(init)
    if is_hf_dir(init):
        return "hf", init
    return "megatron", checkpoint.resolve_checkpoint(init)


def _check_same_shape(spec: ModelSpec, found: ModelSpec, where: Path) -> None:
    ignore = {"init_std", "max_position_embeddings"}
    if spec.model_dump(exclude=ignore) != found.model_dump(exclude=ignore):
        raise ValueError(f"init {where} has shape {found}, but the stage trains {spec}")


def _resume(ckpt: Path, gpt, optimizer, spec: ModelSpec, global_batch: int,
            seq_length: int) -> dict:
    """Load a checkpoint of this run (model, optimizer, RNG); return its train_state."""
    _check_same_shape(spec, checkpoint.read_spec(ckpt), ckpt)
    saved = checkpoint.load_checkpoint(ckpt, gpt, optimizer)
    layout = {"global_batch": global_batch, "seq_length": seq_length}
    saved_layout = {k: saved["train_state"][k] for k in layout}
    if saved_layout != layout:  # the sample order would no longer continue the run
        raise ValueError(f"{ckpt} was written with {saved_layout}, this run uses {layout}")
    checkpoint.restore_rng(saved["rng"])
    return saved["train_state"]


def _initialise(init: Path, update, spec: ModelSpec) -> None:
    """Weights from an HF dir, or weights and optimizer state from a midtrain checkpoint."""
    kind, source = _resolve_init(init)
    if kind == "hf":
        found, weights = import_hf(source)
        _check_same_shape(spec, found, source)
        load_megatron_weights(update.gpt, weights)
        update.weights_loaded()
    else:
        _check_same_shape(spec, checkpoint.read_spec(source), source)
        with_optimizer = checkpoint.has_optimizer_state(source)
        checkpoint.load_checkpoint(source, update.gpt,
                                   update.optimizer if with_optimizer else None)
        if not with_optimizer:
            update.weights_loaded()


def _eos_id(tokenizer_dir: Path) -> int:
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(str(tokenizer_dir)).eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer_dir} has no EOS token")
    return eos


@torch.no_grad()
def _evaluate(model, valid: dict, cfg: TrainConfig, dp_group) -> dict[str, float]:
    """Validation loss per blend part, the samples split over the data-parallel group."""
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for name, dataset in valid.items():
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        for start in range(dp_group.rank() * cfg.micro_batch_size, len(dataset),
                           dp_group.size() * cfg.micro_batch_size):
            idx = range(start, min(start + cfg.micro_batch_size, len(dataset)))
            loss_sum, count = micro_loss(model, *collate([dataset[i] for i in idx], device))
            totals += torch.stack([loss_sum.double(), count.double()])
        if dp_group.size() > 1:
            torch.distributed.all_reduce(totals, group=dp_group)
        out[f"val/{name}/loss"] = (totals[0] / totals[1]).item()
    model.train()
    return out


class _MetricsLog:
    """metrics.jsonl in verl's file-logger shape, written and reported by rank 0 only."""

    def __init__(self, path: Path, enabled: bool, on_metrics: MetricsCallback | None):
        self.path, self.enabled, self.on_metrics = path, enabled, on_metrics

    def truncate_after(self, step: int) -> None:
        """Drop lines past a resumed checkpoint (they will be logged again) and torn ones."""
        if self.enabled:
            keep_metrics_through(self.path, step)

    def log(self, step: int, data: dict) -> None:
        if not self.enabled:
            return
        append_metrics(self.path, step, data)
        if self.on_metrics is not None:
            self.on_metrics(step, data)


def train(model: ModelSpec, cfg: TrainConfig, blend: list[BlendPart], out_dir: str | Path,
          init: str | Path | None, tokenizer_dir: str | Path,
          on_metrics: MetricsCallback | None = None, keep_final_state: bool = True) -> dict:
    """Train `model` on `blend` for `cfg.tokens`, resuming from `out_dir/state` if present.

    `init`: None (random init), an HF Llama dir (weights only), or a previous
    midtrain out_dir / checkpoint dir (weights and optimizer: a decay branch
    continuing a stable stage). Returns the summary written to summary.json.
    While it runs, it keeps the newest `cfg.keep_states` training states; once
    finished, only the final one, and none without `keep_final_state` (a run
    nothing continues: its HF export `hf/` is what it leaves).
    """
    wall_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    state_dir = out_dir / "state"
    rank, world = init_distributed(cfg.tensor_model_parallel_size,
                                   cfg.pipeline_model_parallel_size)
    summary_path = out_dir / "summary.json"
    if summary_path.is_file() and checkpoint.latest_checkpoint(state_dir) is None:
        # finished and its states deleted (summary.json is written before they are)
        if rank == 0:
            checkpoint.prune_checkpoints(state_dir, 0)  # what a killed prune left
        return json.loads(summary_path.read_text())
    # Ranks of a tensor-parallel group hold one model replica and read the same samples.
    tp_group = parallel_state.get_tensor_model_parallel_group()
    dp_group = parallel_state.get_data_parallel_group()

    global_batch = cfg.micro_batch_size * cfg.grad_accum * dp_group.size()
    tokens_per_step = global_batch * cfg.seq_length
    total_steps = math.ceil(cfg.tokens / tokens_per_step)
    warmup_steps = round(cfg.warmup_tokens / tokens_per_step)
    ckpt_every = interval_steps(cfg.checkpoint_every_tokens, tokens_per_step) or total_steps
    export_every = interval_steps(cfg.export_every_tokens, tokens_per_step)

    seed_all(cfg.seed)
    optimizer_kind = resolve_optimizer(cfg.optimizer, cuda=not cpu_compat.on_cpu())
    gpt = build_gpt_model(model, bf16=cfg.bf16, autocast=optimizer_kind == "torch-adamw",
                          recompute_activations=cfg.recompute_activations)
    if rank == 0:
        state_dir.mkdir(parents=True, exist_ok=True)
    update = make_weight_update(gpt, cfg, optimizer_kind)
    optimizer = update.optimizer
    device = next(gpt.parameters()).device
    data = build_blend(
        blend, seq_length=cfg.seq_length, train_samples=total_steps * global_batch,
        valid_samples=math.ceil(cfg.eval_tokens / cfg.seq_length),
        valid_percent=cfg.valid_percent, seed=cfg.seed, vocab_size=model.vocab_size,
        eod=_eos_id(tokenizer_dir), cache_dir=out_dir / "dataset_cache",
    )
    metrics = _MetricsLog(out_dir / METRICS_FILE, rank == 0, on_metrics)

    start_step, last_train = 0, {}
    latest = checkpoint.latest_checkpoint(state_dir)
    if latest is not None:
        saved = _resume(latest, gpt, optimizer, model, global_batch, cfg.seq_length)
        start_step, last_train = saved["step"], saved["last_train"]
    elif init is not None:
        _initialise(Path(init), update, model)
    # Lines past the checkpoint come from an attempt that died; they are logged again.
    metrics.truncate_after(start_step)

    def export(hf_dir: Path) -> None:
        # Gathered in the first replica's tensor-parallel group; its rank 0 (rank 0) writes.
        if dp_group.rank() == 0:
            export_hf(gpt, model, tokenizer_dir, hf_dir,
                      dtype=torch.bfloat16 if cfg.bf16 else torch.float32)

    def export_path(step: int) -> Path | None:
        """Where the HF export declared at `step` goes (None: none; the end's is `hf/`)."""
        if export_every is None or step % export_every or step == total_steps:
            return None
        return out_dir / "hf_checkpoints" / str(step * tokens_per_step)

    def save(step: int, last_train: dict) -> None:
        checkpoint.save_checkpoint(state_dir, step, gpt, model, optimizer,
                                   {"step": step, "tokens": step * tokens_per_step,
                                    "global_batch": global_batch,
                                    "seq_length": cfg.seq_length, "last_train": last_train})
        if rank == 0:  # the new state is complete: older ones past keep_states can go
            checkpoint.prune_checkpoints(state_dir, cfg.keep_states)

    resumed_export = export_path(start_step) if start_step else None
    if resumed_export is not None and not resumed_export.exists():
        export(resumed_export)  # the previous attempt died between save and export

    gpt.train()
    last_val, train_seconds = {}, 0.0
    for step in range(start_step, total_steps):
        step_start = time.perf_counter()
        lr = learning_rate(step, total_steps=total_steps, warmup_steps=warmup_steps, lr=cfg.lr,
                           min_lr=cfg.min_lr, schedule=cfg.schedule,
                           decay_fraction=cfg.decay_fraction)
        first = step * global_batch + dp_group.rank() * cfg.micro_batch_size * cfg.grad_accum
        micro_batches = [
            collate([data.train[first + m * cfg.micro_batch_size + i]
                     for i in range(cfg.micro_batch_size)], device)
            for m in range(cfg.grad_accum)
        ]
        loss = update.accumulate(micro_batches)
        grad_norm = update.step(lr)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise TrainingDivergedError(
                f"training diverged at step {step + 1}: loss {loss}, grad norm {grad_norm}; "
                f"last good checkpoint: {checkpoint.latest_checkpoint(state_dir)}")
        elapsed = time.perf_counter() - step_start
        train_seconds += elapsed

        done = step + 1
        last_train = {"train/loss": loss, "train/lr": lr, "train/tokens": done * tokens_per_step,
                      "train/grad_norm": grad_norm, "perf/tokens_per_s": tokens_per_step / elapsed}
        record = dict(last_train)
        if done % cfg.eval_every_steps == 0 or done == total_steps:
            last_val = _evaluate(update.module, data.valid, cfg, dp_group)
            record.update(last_val)
        metrics.log(done, record)
        if done % ckpt_every == 0 or done == total_steps:
            save(done, last_train)
        if (path := export_path(done)) is not None:
            export(path)

    if start_step == total_steps:  # resumed after the final checkpoint
        last_val = _evaluate(update.module, data.valid, cfg, dp_group)
    summary = {
        "steps": total_steps,
        "tokens": total_steps * tokens_per_step,
        "tokens_per_step": tokens_per_step,
        "world_size": world,
        "tensor_model_parallel_size": tp_group.size(),
        "optimizer": optimizer_kind,
        "resumed_from_step": start_step if latest is not None else None,
        "final": {**last_train, **last_val},
        "wall_time_s": time.perf_counter() - wall_start,
        "train_tokens_per_s": ((total_steps - start_step) * tokens_per_step / train_seconds
                               if train_seconds else None),
        "model": model.model_dump(),
        "num_parameters": model.num_parameters(),
        "config": cfg.model_dump(),
        "blend": [part.model_dump() for part in blend],
        "init": str(init) if init is not None else None,
    }
    export(out_dir / "hf")
    if rank == 0:
        # the digest makes "same stage key, same weights" checkable across runs and machines
        summary["reproducibility"] = reproducibility(device.type == "cuda", out_dir / "hf")
        atomic_write(summary_path, json.dumps(summary, indent=2))
        if not keep_final_state:
            checkpoint.prune_checkpoints(state_dir, 0)
    torch.distributed.barrier()
    return summary


class TrainJob(BaseModel):
    """Everything `train` needs, as one JSON file for launchers (torchrun, Slurm)."""

    model: ModelSpec
    config: TrainConfig
    blend: list[BlendPart]
    out_dir: Path
    init: Path | None = None
    tokenizer_dir: Path
    keep_final_state: bool = True


def main(argv: list[str] | None = None) -> None:
    """`torchrun --nproc_per_node N -m midtrain.train job.json` (or plain `python -m`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m midtrain.train <job.json>")
    job = TrainJob.model_validate_json(Path(args[0]).read_text())
    try:
        train(job.model, job.config, job.blend, job.out_dir, job.init, job.tokenizer_dir,
              keep_final_state=job.keep_final_state)
    except BaseException:
        # A process that fails with NCCL's group alive waits minutes on its heartbeat
        # monitor before it exits (seen on an H100 after a failed step): a failure must
        # end the stage at once.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        raise


if __name__ == "__main__":
    main()
