"""Write synthetic long-RL evaluation curves as W&B panel CSV exports, for the worked example of
`midprobe validate-probe --curves` (docs/validate-probe.md).

Each group is one RL set-up with four recipes; each run's accuracy follows a saturating curve
R(t) = R0 + (A - R0) / (1 + (t_mid / t)^B) with its own start R0, ceiling A and speed t_mid,
plus binomial noise of a `--eval-size`-problem benchmark. Some recipes start high and saturate
early, others start low and end high, so early reads and the ends disagree by construction.
Two metrics per group (two benchmarks), written as two files, as the W&B UI exports one panel.
With `--tokens`, a third file per group holds each run's cumulative `tokens` (a batch of 512
rollouts a step, responses of its own length that grows over training), for budgets in tokens.

    python dev/example_curves.py OUT_DIR [--groups 6] [--steps 300] [--eval-every 10] [--seed 0] [--tokens]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def saturating(t: np.ndarray, r0: float, ceiling: float, t_mid: float, b: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(t > 0, r0 + (ceiling - r0) / (1 + (t_mid / np.maximum(t, 1e-9)) ** b), r0)


ROLLOUTS_PER_STEP = 512


def write_export(path: Path, metric: str, recipes: list[str], t: np.ndarray, curves: list[np.ndarray],
                 fmt: str) -> None:
    """One W&B panel export: Step, and per run its column with the smoothed panel's __MIN/__MAX."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["Step"]
        for recipe in recipes:
            header += [f"{recipe} - {metric}", f"{recipe} - {metric}__MIN", f"{recipe} - {metric}__MAX"]
        writer.writerow(header)
        for i, step in enumerate(t):
            row = [int(step)]
            for curve in curves:
                row += [format(curve[i], fmt)] * 3
            writer.writerow(row)


def write_group(out: Path, group: int, rng: np.random.Generator, steps: int, eval_every: int,
                eval_size: int, tokens: bool) -> None:
    recipes = [f"g{group}-recipe{i}" for i in range(4)]
    t = np.arange(0, steps + 1, eval_every, dtype=float)
    # fast starters: high R0, low ceiling, early t_mid; slow starters the other way
    params = [(rng.uniform(0.05, 0.35), rng.uniform(0.4, 0.8), rng.uniform(10, 150), rng.uniform(0.8, 2.5))
              for _ in recipes]
    for metric, offset in (("math/acc", 0.0), ("gsm/acc", 0.1)):
        curves = [rng.binomial(eval_size, np.clip(saturating(t, r0 + offset, ceiling + offset, t_mid, b), 0, 1))
                  / eval_size for (r0, ceiling, t_mid, b) in params]
        write_export(out / f"group{group}_{metric.split('/')[0]}.csv", metric, recipes, t, curves, ".4f")
    if tokens:
        every_step = np.arange(steps + 1, dtype=float)
        counts = []
        for _ in recipes:  # a response length of its own, growing linearly over training
            length = rng.uniform(300, 1500) * (1 + rng.uniform(0, 2) * every_step / steps)
            cumulative = np.cumsum(np.where(every_step > 0, ROLLOUTS_PER_STEP * length, 0.0))
            counts.append(cumulative[t.astype(int)])
        write_export(out / f"group{group}_tokens.csv", "tokens", recipes, t, counts, ".0f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--groups", type=int, default=6)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens", action="store_true", help="also write each run's cumulative tokens")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for group in range(args.groups):
        write_group(args.out, group, rng, args.steps, args.eval_every, args.eval_size, args.tokens)


if __name__ == "__main__":
    main()
