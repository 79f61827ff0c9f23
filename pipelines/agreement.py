"""Decision accuracy: the one computation both `validate-probe` modes use.

A *decision* is a pair of runs (or recipes) that a target orders; a decider (a probe budget, a
signal read at a budget) is right on it when it orders the pair the same way, and counts one
half when it cannot order it (equal or missing values). Decision accuracy is the mean over the
pairs. Its confidence interval is a percentile bootstrap of that same mean: groups of pairs
(runs sharing one RL set-up) drawn with replacement, then pairs within each drawn group, and,
where the decider has bootstrap replicates of its own (seeds, eval problems), replicate b of
the decider scored on draw b of the pairs. The target's order is its point order in both the
estimate and the interval, so the interval is about the same quantity as the point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def pair_outcomes(decider: np.ndarray, target: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Per pair ([P, 2] indices into the last axis), 1 when `decider` orders it as `target`,
    0 when the other way, 0.5 when either side cannot order it (equal values, or nan).
    Leading axes broadcast: [..., P]."""
    if not len(pairs):
        return np.zeros(np.broadcast_shapes(decider.shape[:-1], target.shape[:-1]) + (0,))
    dd = decider[..., pairs[:, 0]] - decider[..., pairs[:, 1]]
    dt = target[..., pairs[:, 0]] - target[..., pairs[:, 1]]
    undecided = (dd == 0) | (dt == 0) | np.isnan(dd) | np.isnan(dt)
    return np.where(undecided, 0.5, (dd * dt > 0).astype(float))


def agreement(decider: np.ndarray, target: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Share of `pairs` that `decider` orders as `target` (ties a coin flip); nan without pairs."""
    if not len(pairs):
        return np.full(np.broadcast_shapes(decider.shape[:-1], target.shape[:-1]), np.nan)
    return pair_outcomes(decider, target, pairs).mean(axis=-1)


@dataclass(frozen=True)
class Accuracy:
    accuracy: float  # nan: no pair to decide
    ci: tuple[float, float]
    pairs: int

    def to_json(self) -> dict:
        return {"accuracy": finite(self.accuracy), "ci": [finite(c) for c in self.ci], "pairs": self.pairs}


def finite(value: float) -> float | None:
    """A JSON number: rounded, None for nan."""
    return None if np.isnan(value) else round(float(value), 4)


class PairBootstrap:
    """Resampling weights of a fixed set of pairs, drawn once and shared by every decider, so
    that two deciders' intervals come from the same draws (paired, like their point values).

    `groups[p]` names pair p's group. Each draw picks groups with replacement, then pairs with
    replacement within each picked group; `weights[b, p]` counts how often pair p was drawn.
    """

    def __init__(self, groups: list[str], samples: int = 2000, confidence: float = 0.95, seed: int = 0):
        self.confidence, self.n = confidence, len(groups)
        rng = np.random.default_rng(seed)
        names = sorted(set(groups))
        members = [np.flatnonzero(np.array(groups, dtype=object) == g) for g in names]
        self.weights = np.zeros((samples, self.n))
        if not self.n:
            return
        picked = rng.integers(0, len(names), size=(samples, len(names)))
        for b in range(samples):
            for g in picked[b]:
                drawn = rng.integers(0, len(members[g]), size=len(members[g]))
                np.add.at(self.weights[b], members[g][drawn], 1.0)

    def accuracy(self, outcomes: np.ndarray, replicate_outcomes: np.ndarray | None = None) -> Accuracy:
        """`outcomes` [P]: the decider's point outcome per pair (pair_outcomes). With
        `replicate_outcomes` [samples, P], draw b scores the decider's replicate b."""
        if not self.n:
            return Accuracy(float("nan"), (float("nan"), float("nan")), 0)
        per_draw = outcomes[None, :] if replicate_outcomes is None else replicate_outcomes
        values = (self.weights * per_draw).sum(axis=1) / self.weights.sum(axis=1)
        alpha = (1 - self.confidence) / 2
        return Accuracy(float(outcomes.mean()),
                        (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))), self.n)
