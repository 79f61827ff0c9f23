"""Learning-rate schedules as pure functions of the optimizer step (nothing to checkpoint)."""

from __future__ import annotations

import math

from midtrain.config import Schedule


def learning_rate(step: int, *, total_steps: int, warmup_steps: int, lr: float, min_lr: float,
                  schedule: Schedule, decay_fraction: float) -> float:
    """The LR for optimizer step `step` (0-based) of `total_steps`.

    - constant: linear warmup to `lr`, then `lr`.
    - cosine: warmup, then cosine from `lr` to `min_lr` by the last step.
    - wsd: warmup, stable at `lr`, then linear decay to `min_lr` over the last
      `decay_fraction` of the steps (a stable stage that is later forked into
      decay branches uses `constant` instead, and each branch `linear-decay`).
    - linear-decay: from `lr` straight down to `min_lr` over all steps (a decay
      branch forked from a stable checkpoint; warmup is normally 0).
    The last step reaches `min_lr` exactly for the decaying schedules.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * total_steps))
        decay_start = max(warmup_steps, total_steps - decay_steps)
        if step < decay_start:
            return lr
        start, span = decay_start, total_steps - decay_start
    else:
        start, span = warmup_steps, total_steps - warmup_steps
    progress = 1.0 if span <= 1 else min(1.0, (step - start) / (span - 1))
    if schedule == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule in ("wsd", "linear-decay"):
        return lr + (min_lr - lr) * progress
    raise ValueError(f"unknown schedule {schedule!r}")
