"""Probe specs a user writes (shipped name, derived, inline, YAML file) and prompt templates."""

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipelines.errors import InputError
from pipelines.plan import build_plan
from pipelines.preflight import load_sweep, validate_sweep
from pipelines.sweep import bundled_sweep
from rl_probe.spec import PROBE_SPECS, PROMPT_TEMPLATES, ProbeSpec, SpecSourceError, resolve_probe_spec

TOY_SMOKE = bundled_sweep("toy-smoke")


def _sweep(tmp_path: Path, spec) -> Path:
    data = yaml.safe_load(TOY_SMOKE.read_text())
    data["probe"]["spec"] = spec
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_spec_is_a_name_a_derivation_a_full_mapping_or_a_file(tmp_path):
    base = PROBE_SPECS["toy-cpu-v5"]
    assert resolve_probe_spec("toy-cpu-v5") is base
    derived = resolve_probe_spec({"base": "toy-cpu-v5", "lr": 1e-5, "template": "simplerl-abel"})
    assert derived.name == "toy-cpu-v5+lr,template" and derived.lr == 1e-5
    assert derived.template == PROMPT_TEMPLATES["simplerl-abel"] and derived.steps == base.steps
    assert derived.content_hash() != base.content_hash()
    named = resolve_probe_spec({"base": "toy-cpu-v5", "name": "mine", "lr": 1e-5})
    assert named.name == "mine"
    full = resolve_probe_spec(base.model_dump(mode="json"))
    assert full.content_hash() == base.content_hash()

    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "mine.yaml").write_text("base: toy-cpu-v5\nlr: 1.0e-5\ntemplate: simplerl-abel\n")
    from_file = resolve_probe_spec("specs/mine.yaml", tmp_path)
    assert from_file.content_hash() == derived.content_hash()
    # the probe command's --set overrides apply on top of a name or a file
    assert resolve_probe_spec("toy-cpu-v5", overrides={"lr": 1e-5, "template": "simplerl-abel"}) == derived
    assert resolve_probe_spec("specs/mine.yaml", tmp_path, {"steps": 3}).steps == 3

    with pytest.raises(SpecSourceError, match="unknown probe spec 'nope'"):
        resolve_probe_spec("nope")
    with pytest.raises(SpecSourceError, match="base: unknown probe spec"):
        resolve_probe_spec({"base": "nope", "lr": 1.0})
    with pytest.raises(ValidationError) as exc:
        resolve_probe_spec({"base": "toy-cpu-v5", "lr": -1, "tempo": 1})
    assert {e["loc"] for e in exc.value.errors()} == {("lr",), ("tempo",)}


def test_templates_enter_the_hash_by_content():
    base = PROBE_SPECS["toy-smoke-v1"]
    as_text = resolve_probe_spec({"base": "toy-smoke-v1", "name": "t", "template": "Q: {question}\nA:"})
    as_fields = resolve_probe_spec({"base": "toy-smoke-v1", "name": "t",
                                    "template": {"name": "custom", "text": "Q: {question}\nA:"}})
    assert as_text.content_hash() == as_fields.content_hash() != base.content_hash()
    chat = resolve_probe_spec({"base": "toy-smoke-v1", "name": "t", "template": {
        "text": "{question}", "chat": True, "system": "Be brief."}})
    assert chat.content_hash() != resolve_probe_spec({"base": "toy-smoke-v1", "name": "t", "template": "chat"}
                                                     ).content_hash()
    # LaTeX braces are literal: {question} is replaced, nothing else is formatted
    boxed = PROMPT_TEMPLATES["chat-boxed"]
    assert boxed.body("What is 2+2?") == ("What is 2+2?\nPlease reason step by step, and put your final "
                                          "answer within \\boxed{}.")
    assert "\\boxed{} tag.\nThis is the problem:\nQ\nAssistant: <think>" in PROMPT_TEMPLATES["orz"].body("Q")
    with pytest.raises(ValidationError, match="unknown template 'nope'"):
        ProbeSpec(**{**base.model_dump(), "template": "nope"})
    with pytest.raises(ValidationError, match="needs chat: true"):
        ProbeSpec(**{**base.model_dump(), "template": {"text": "{question}", "system": "x"}})
    # the store keeps specs as JSON: the hash survives the round trip
    assert ProbeSpec.model_validate_json(chat.model_dump_json()).content_hash() == chat.content_hash()


def test_a_sweep_takes_a_derived_spec_and_probes_with_its_hash(tmp_path):
    path = _sweep(tmp_path, {"base": "toy-smoke-v1", "lr": 5e-4})
    assert validate_sweep(path) == []
    plan = build_plan(load_sweep(path), path)
    expected = resolve_probe_spec({"base": "toy-smoke-v1", "lr": 5e-4})
    assert {run.config.spec_hash for run in plan.probes.values()} == {expected.content_hash()}
    # a spec change re-keys the probes (and difficulty control, which measures with the spec), not
    # the tokenizer, curation or mid-training
    (tmp_path / "plain").mkdir()
    plain = _sweep(tmp_path / "plain", "toy-smoke-v1")
    other = build_plan(load_sweep(plain), plain)
    assert {r.key for r in plan.probes.values()}.isdisjoint(r.key for r in other.probes.values())

    def upstream(p):
        return {r.key for r in p.runs() if r.stage not in ("probe", "select_problems")}

    assert upstream(plan) == upstream(other)


def test_spec_errors_in_a_sweep_name_their_field(tmp_path):
    errors = validate_sweep(_sweep(tmp_path, {"base": "toy-smoke-v1", "lr": -1, "tempo": 1}))
    assert "probe.spec.lr: Input should be greater than 0" in errors
    assert "probe.spec.tempo: unknown key" in errors
    (tmp_path / "bad.yaml").write_text("base: toy-smoke-v1\ngroup_size: 1\n")
    errors = validate_sweep(_sweep(tmp_path, "bad.yaml"))  # relative to the sweep file
    assert errors == ["probe.spec (bad.yaml).group_size: Input should be greater than or equal to 2"]
    with pytest.raises(InputError, match=r"sweep.yaml: probe.spec: unknown probe spec 'missing.yaml'"):
        load_sweep(_sweep(tmp_path, "missing.yaml"))


def test_a_chat_template_spec_needs_a_tokenizer_with_one(tmp_path):
    from test_probe_helpers import llama_style_tokenizer, train_tokenizer

    errors = validate_sweep(_sweep(tmp_path, {"base": "toy-smoke-v1", "template": "chat-boxed"}))
    assert errors == ["probe.spec.template: 'chat-boxed' renders prompts with the tokenizer's chat template, "
                      "and the tokenizer trained by this sweep has none"]
    for name, make in (("chat", llama_style_tokenizer), ("plain", train_tokenizer)):
        make(tmp_path / name)
        data = yaml.safe_load(_sweep(tmp_path, "toy-smoke-v1").read_text())
        data["tokenizer"] = {"path": str(tmp_path / name)}
        data["probe"]["spec"] = {"base": "toy-smoke-v1", "template": "chat"}
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(data))
        errors = validate_sweep(tmp_path / "sweep.yaml")
        assert errors == ([] if name == "chat" else [
            f"probe.spec.template: 'chat' renders prompts with the tokenizer's chat template, and "
            f"{tmp_path / name} has none"])


def test_specs_command_shows_every_resolved_field(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "specs", "smollm2-cpu-v1", "--set", "lr=1e-5"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    header, body = result.stdout.split("\n", 1)
    shown = yaml.safe_load(body)
    spec = resolve_probe_spec("smollm2-cpu-v1", overrides={"lr": 1e-5})
    assert header.endswith(f"{spec.content_hash()} (rankings compare runs with the same hash)")
    assert shown == json.loads(spec.model_dump_json())
    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "specs", "toy-cpu-v5", "--set", "lr=-1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "--spec toy-cpu-v5: lr: Input should be greater than 0"


def test_shipped_specs_keep_their_hashes_and_retired_ones_still_resolve():
    """Specs are data (rl_probe/specs/*.yaml): moving or reformatting one must not change what a
    ranking compares. A deliberate change to a shipped spec is a new name, or updates this record."""
    from rl_probe.spec import CURRENT_SPECS

    recorded = json.loads((Path(__file__).parent / "fixtures" / "probe_spec_hashes.json").read_text())
    assert {name: spec.content_hash() for name, spec in PROBE_SPECS.items()} == recorded
    assert set(CURRENT_SPECS) == {"toy-smoke-v1", "toy-cpu-v5", "smollm2-cpu-v2", "octothinker-v1"}
    assert resolve_probe_spec("toy-cpu-v2").content_hash() == recorded["toy-cpu-v2"]  # retired, still resolves
