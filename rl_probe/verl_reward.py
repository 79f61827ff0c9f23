"""verl custom reward function: the probe's reward inside a verl run.

verl loads this file by path (`reward.custom_reward_function.path`) and calls
`compute_score` once per response with keyword arguments; the spec's reward
variant arrives through `reward_kwargs`. The extra keys become verl's
`reward_extra_info`, so validation logs `val-core/<source>/acc/mean@N`, and verl's
generation dumps carry them per response: the problem id (from the row's
`extra_info`, a string, which verl's metric aggregation skips) is how the
read-back ties each validation response to its problem for ranking. Validation rows
(split other than "train") are scored with evaluation's deadline, as in the embedded engine.
"""

from rl_probe.reward import score, score_held_out


def compute_score(data_source, solution_str, ground_truth, extra_info=None, variant="default", **kwargs) -> dict:
    scorer = score if (extra_info or {}).get("split") == "train" else score_held_out
    result = scorer(solution_str, str(ground_truth), variant)
    return {
        "score": result.score,
        "acc": float(result.acc),
        "format_ok": float(result.format_ok),
        "repeated": float(result.repeated),
        "id": str((extra_info or {}).get("id", "")),
        "data_source": str(data_source),
    }
