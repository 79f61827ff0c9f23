"""Difficulty control: choose the probe's problem difficulty from a model's measured pass@k.

RL amplifies what a model can already sometimes do: a group whose samples all
score the same has zero GRPO advantage and teaches nothing. SimpleRL-Zoo
therefore matches data difficulty to the model; here the match is measured,
not guessed — pass@k per difficulty level with the probe's own template,
sampler, temperature, length limit and reward.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from rl_probe.prompts import Prompter
from rl_probe.reward import score
from rl_probe.spec import ProbeSpec


def pass_at_k_by_difficulty(checkpoint: Path, problems: list[dict], spec: ProbeSpec, k: int = 8,
                            per_level: int = 32, seed: int = 0) -> dict[int, float]:
    """Unbiased pass@k of a checkpoint at each difficulty level present in ``problems``.

    Uses 2k samples per problem so the estimator has room above k, on at most
    ``per_level`` problems per level (the first ones: problem sets are shuffled).
    """
    # imported here: choosing levels from stored numbers (the report) needs no torch
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_probe.embedded import _generator, generate, pass_at_k

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    prompter = Prompter(tokenizer, spec, model.generation_config.eos_token_id)
    by_level: dict[int, list[dict]] = defaultdict(list)
    for problem in problems:
        if len(by_level[problem["difficulty"]]) < per_level and prompter.fits(problem):
            by_level[problem["difficulty"]].append(problem)
    n = 2 * k
    result = {}
    for level, chosen in sorted(by_level.items()):
        repeated = [p for p in chosen for _ in range(n)]
        texts, _, _ = generate(model, prompter, [prompter.prompt_ids(p) for p in repeated],
                               max_new_tokens=spec.response_length_at(0), temperature=spec.temperature,
                               generator=_generator(seed, level, "difficulty", model.device))
        correct = np.array([score(t, p["answer"], spec.reward_variant).acc for t, p in zip(texts, repeated)])
        per_problem = correct.reshape(len(chosen), n).sum(axis=1)
        result[level] = float(np.mean([pass_at_k(n, int(c), k) for c in per_problem]))
    return result


def choose_levels(pass_at_k_by_level: dict[int, float], low: float, high: float) -> list[int]:
    """The widest run of consecutive levels whose pooled pass@k lies in [low, high].

    Pooled is the mean over the run's levels, which is the pass@k of a problem set drawing
    its levels uniformly (as `ToyWorld.problems` does). Among equally wide runs the harder
    one wins (more room to learn). With no run inside, the single level closest to the
    range. A range of levels, as SimpleRL-Zoo picks, rather than single levels: per-level
    estimates are noisy, and a run keeps the problem set contiguous in difficulty.
    """
    levels = sorted(pass_at_k_by_level)
    runs = [levels[i:j] for i in range(len(levels)) for j in range(i + 1, len(levels) + 1)]
    inside = [run for run in runs if low <= pooled_pass_at_k(pass_at_k_by_level, run) <= high]
    if inside:
        return max(inside, key=lambda run: (len(run), run[0]))
    middle = (low + high) / 2
    return [min(levels, key=lambda level: abs(pass_at_k_by_level[level] - middle))]


def pooled_pass_at_k(pass_at_k_by_level: dict, levels: list[int]) -> float:
    """pass@k of a problem set drawing `levels` uniformly (keys may be ints or JSON strings)."""
    by_level = {int(level): value for level, value in pass_at_k_by_level.items()}
    return float(np.mean([by_level[level] for level in levels]))
