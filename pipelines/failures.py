"""Failure modes of a probe run, read off its metric curves.

These are the ways zero-RL goes wrong on base models that the field reports
(repetition until the length limit, length collapse, late reward collapse,
format hacking); here they become attributes of a recipe rather than crashes.
Each rule looks at the last fifth of the run against its beginning.
"""

from __future__ import annotations

import numpy as np

FAILURE_MODES = {
    "repetition": "responses repeat until the length limit (repetition ratio ≥ 0.5 and clip ratio ≥ 0.3 at the end)",
    "length-collapse": "mean response length fell below 40 % of its peak while held-out accuracy did not improve",
    "reward-collapse": "training reward fell by more than half of its gain, and by ≥ 0.2, after peaking",
    "format-hacking": "format errors fell by ≥ 0.2 while held-out accuracy did not improve",
}


def _series(metrics: dict[str, list[tuple[int, float]]], name: str) -> np.ndarray:
    return np.array([v for _, v in metrics.get(name, [])], dtype=float)


def _tail(values: np.ndarray) -> float:
    return float(values[-max(1, len(values) // 5):].mean())


def _head(values: np.ndarray) -> float:
    return float(values[:max(1, len(values) // 5)].mean())


def classify(metrics: dict[str, list[tuple[int, float]]], accuracy: np.ndarray) -> list[str]:
    """Failure modes of one probe run from its metric series and held-out accuracy curve."""
    modes = []
    repetition = _series(metrics, "behaviour/repetition_ratio")
    clip = _series(metrics, "response_length/clip_ratio")
    if len(repetition) and len(clip) and _tail(repetition) >= 0.5 and _tail(clip) >= 0.3:
        modes.append("repetition")

    improved = len(accuracy) >= 2 and accuracy[-1] - accuracy[0] > 0.02
    length = _series(metrics, "response_length/mean")
    # shorter answers that score better are the policy learning the format, not a failure
    if len(length) >= 5 and _tail(length) < 0.4 * length.max() and not improved:
        modes.append("length-collapse")

    reward = _series(metrics, "critic/score/mean")
    if len(reward) >= 5:
        peak = float(np.convolve(reward, np.ones(3) / 3, mode="valid").max())
        start, end = _head(reward), _tail(reward)
        if peak - end >= 0.2 and peak - end > 0.5 * (peak - start):
            modes.append("reward-collapse")

    format_errors = _series(metrics, "behaviour/format_error_ratio")
    if (len(format_errors) >= 5 and len(accuracy) >= 2
            and _head(format_errors) - _tail(format_errors) >= 0.2 and not improved):
        modes.append("format-hacking")
    return modes
