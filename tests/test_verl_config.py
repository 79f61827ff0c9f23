"""The verl engine's config mapping, torch-free: what it sets for a spec, launch and cluster."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from rl_probe.spec import PROBE_SPECS, ProbeSpec, get_probe_spec, resolve_probe_spec
from rl_probe.verl_config import SPEC_KEYS, VerlCluster, VerlLaunchSettings, hydra_overrides

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((Path(__file__).parent / "fixtures" / "verl_overrides_100c7ce.json").read_text())

# ProbeSpec fields that set no verl key as they are, and where each one acts instead
NOT_IN_SPEC_KEYS = {
    "name", "version",  # the experiment name (with the spec's hash)
    "engine",  # checked: verl
    "template", "max_prompt_drop_share",  # the parquet's rendered prompts, overlong ones dropped
    "passk_ks", "profile_problems",  # the profile launch: its parquet and its samples per problem
    "dtype", "fewshot_k", "eval_sampled", "reward_control", "length_schedule",  # embedded engine only
}


def _launch(case: dict) -> VerlLaunchSettings:
    return VerlLaunchSettings(**{name: Path(path) for name, path in case["paths"].items()}, seed=case["seed"],
                              attempt=case["attempt"], cluster=VerlCluster(**case["cluster"]))


@pytest.mark.parametrize("case", RECORDED["cases"], ids=lambda case: (
    f"{case['spec']['base']}{'+fields' if len(case['spec']) > 1 else ''}-seed{case['seed']}"
    f"{'-profile' if case['profile'] else ''}"))
def test_overrides_are_those_before_the_mapping(case):
    """Every override, for each verl spec (and a variant that sets its derived keys), each launch
    and the profile launch, is what the keyword-argument function of 100c7ce produced."""
    overrides = hydra_overrides(resolve_probe_spec(case["spec"]), _launch(case), profile=case["profile"])
    mapping = dict(override.split("=", 1) for override in overrides)
    assert {key: value.replace(str(ROOT), "<repo>") for key, value in mapping.items()} == case["overrides"]


def test_every_shipped_verl_spec_is_recorded():
    verl_specs = {name for name, spec in PROBE_SPECS.items() if spec.engine == "verl"}
    assert verl_specs <= {case["spec"]["base"] for case in RECORDED["cases"]}


def test_every_spec_field_sets_a_verl_key_or_acts_elsewhere():
    """A field added to ProbeSpec must say what it means for a verl run, not be dropped silently."""
    assert set(SPEC_KEYS) | NOT_IN_SPEC_KEYS == set(ProbeSpec.model_fields)
    assert not set(SPEC_KEYS) & NOT_IN_SPEC_KEYS


def test_rejects_embedded_specs():
    launch = VerlLaunchSettings(model_path=Path("m"), train_file=Path("t"), val_file=Path("v"),
                                out_dir=Path("o"), seed=0)
    with pytest.raises(ValueError, match="engine"):
        hydra_overrides(get_probe_spec("toy-cpu-v5"), launch)


def test_cluster_options_are_checked():
    with pytest.raises(ValidationError, match="n_gpu_per_node"):
        VerlCluster(n_gpu_per_node=4)
    with pytest.raises(ValidationError, match="rollout_engine"):
        VerlCluster(rollout_engine="hf")
