"""A sweep's mid-training in several processes: `midtrain.nproc_per_node`, validated and
keyed by the sweep."""

from pathlib import Path

import pytest
import yaml

from pipelines.plan import build_plan
from pipelines.sweep import bundled_sweep, load_sweep, validate_sweep

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


def test_nproc_must_be_a_multiple_of_the_model_parallel_size(tmp_path):
    errors = validate_sweep(_sweep(tmp_path, nproc_per_node=3, tensor_model_parallel_size=2))
    assert errors == ["midtrain.nproc_per_node: 3 is not a positive multiple of "
                      "tensor_model_parallel_size x pipeline_model_parallel_size = 2"]
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
