"""summary.json as both engines write it: one model, from metrics.jsonl rows and profile.json."""

from __future__ import annotations

import json

from rl_probe.spec import get_probe_spec
from rl_probe.summary import ProbeSummary
from runfiles import append_metrics, read_metrics

SPEC = get_probe_spec("toy-smoke-v1")
PROFILE = {"spec": SPEC.name, "pass_at_k": {"1": 0.25, "8": 0.75}, "pass_at_k_problems": 4,
           "pass_at_k_samples": 8, "fewshot": {"k": 2, "acc": 0.5}}
PROMPTS = {"train": {"total": 10, "kept": 9, "dropped": 1}}


def _rows(tmp_path) -> list[dict]:
    """A probe's metrics.jsonl: step 0 evaluated, two train steps, the last evaluated."""
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, 0, {"val-core/toy/acc/mean@1": 0.25, "val-core/toy/count": 3, "data/train_prompts_kept": 9})
    append_metrics(path, 1, {"critic/score/mean": 0.5, "timing_s/step": 1.0})
    append_metrics(path, 2, {"critic/score/mean": 0.75, "timing_s/step": 2.0, "val-core/toy/acc/mean@1": 0.5,
                             "val-core/toy/count": 3})
    return read_metrics(path)


def test_embedded_summary_keeps_the_keys_values_and_order_it_had(tmp_path):
    summary = ProbeSummary.from_metrics(_rows(tmp_path), PROFILE, spec=SPEC, engine="embedded", seed=3,
                                        checkpoint=tmp_path / "ckpt", prompts=PROMPTS,
                                        timings={"profile_s": 1.23456, "total_s": 9.0})
    written = summary.write(tmp_path / "summary.json")
    expected = {
        "spec": SPEC.name, "spec_version": SPEC.version, "spec_hash": SPEC.content_hash(), "engine": "embedded",
        "seed": 3, "checkpoint": str(tmp_path / "ckpt"), "steps": SPEC.steps, "final_step": 2,
        "final": {"val-core/toy/acc/mean@1": 0.5, "val-core/toy/count": 3},
        "initial": {"val-core/toy/acc/mean@1": 0.25, "val-core/toy/count": 3},
        "evals": {"0": {"val-core/toy/acc/mean@1": 0.25, "val-core/toy/count": 3},
                  "2": {"val-core/toy/acc/mean@1": 0.5, "val-core/toy/count": 3}},
        "final_train_score": 0.75, "base_pass_at_k": {"1": 0.25, "8": 0.75}, "base_fewshot_acc": 0.5,
        "prompts": PROMPTS, "timings": {"profile_s": 1.235, "total_s": 9.0, "mean_step_s": 1.5},
    }
    assert (tmp_path / "summary.json").read_text() == json.dumps(expected, indent=2) + "\n"
    assert written == expected


def test_verl_summary_has_no_timings_and_tolerates_a_missing_profile(tmp_path):
    rows = _rows(tmp_path)
    written = ProbeSummary.from_metrics(rows, None, spec=SPEC, engine="verl", seed=3, checkpoint=tmp_path,
                                        prompts=None).write(tmp_path / "summary.json")
    assert list(written)[-1] == "prompts" and "timings" not in written
    assert written["base_pass_at_k"] is None and written["base_fewshot_acc"] is None
    assert written["final_step"] == 2 and written["final_train_score"] == 0.75
    without_evals = ProbeSummary.from_metrics(rows[1:2], None, spec=SPEC, engine="verl", seed=3,
                                              checkpoint=tmp_path, prompts=None).as_json()
    assert (without_evals["final_step"], without_evals["final"], without_evals["evals"]) == (None, {}, {})
