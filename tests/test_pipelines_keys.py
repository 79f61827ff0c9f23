"""Stage keys hash what runs: every default of every stage's config model, each stage's code
version, and nothing a stage does not read; `plan` says why a run will run."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.plan import build_plan, why_run
from pipelines.preflight import load_sweep
from pipelines.store import RunStore
from pipelines.sweep import bundled_sweep

TOY_SMOKE = bundled_sweep("toy-smoke")


def _keys(path: Path = TOY_SMOKE) -> dict[str, str]:
    return {run.label: run.key for run in build_plan(load_sweep(path), path).runs()}


def _downstream_of(roots: set[str], path: Path = TOY_SMOKE) -> set[str]:
    """Labels of the runs of the stages or labels in `roots` and of every run that consumes one."""
    hit: set[str] = set()
    for run in build_plan(load_sweep(path), path).runs():  # dependencies first
        if roots & {run.stage, run.label} or any(dep.label in hit for dep in run.inputs.values()):
            hit.add(run.label)
    return hit


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {label for label in before if before[label] != after[label]}


def _with_default(monkeypatch, rebuilt: list, model, name: str, value) -> None:
    """What editing a field's default in the source does: the class that declares it, its
    subclasses, and the sweep schema that embeds them, rebuilt with the new default."""
    from pipelines.sweep import Sweep

    for cls in (model, *model.__subclasses__()):
        field = copy.copy(cls.model_fields[name])
        field.default = value
        monkeypatch.setitem(cls.model_fields, name, field)
        rebuilt.append(cls)
    rebuilt.append(Sweep)
    for cls in rebuilt:
        cls.model_rebuild(force=True)


@pytest.fixture
def rebuilt(monkeypatch):
    """Models a test gave another default are rebuilt once their fields are restored."""
    models: list = []
    yield models
    monkeypatch.undo()
    for model in models:
        model.model_rebuild(force=True)


@pytest.mark.parametrize("case", ["train_default", "dedup_default", "filter_default", "toy_world_default",
                                  "midtrain_code", "curation_code", "probe_code", "problems_code"])
def test_a_changed_default_or_code_version_changes_exactly_the_dependent_keys(case, monkeypatch, rebuilt):
    from data_recipes import curate, filters, toyworld
    from midtrain import config
    from pipelines import code_versions

    before = _keys()
    if case == "train_default":
        _with_default(monkeypatch, rebuilt, config.TrainSettings, "weight_decay", 0.05)
        expected = _downstream_of({"midtrain"})
    elif case == "dedup_default":
        _with_default(monkeypatch, rebuilt, curate.DedupConfig, "n_grams", 6)
        expected = _downstream_of({"curate"})
    elif case == "filter_default":  # a threshold of a filter block the qa preset uses, not web's
        init = filters.MathQualityFilter.__init__
        monkeypatch.setattr(init, "__defaults__", (init.__defaults__[0], 50_000, *init.__defaults__[2:]))
        expected = _downstream_of({"curate qa_cot", "curate qa_short"})
    elif case == "toy_world_default":
        _with_default(monkeypatch, rebuilt, toyworld.ToyWorldConfig, "web_qa_rate", 0.2)
        expected = set(before)
    else:
        stage = {"curation": "curate"}.get(case.removesuffix("_code"), case.removesuffix("_code"))
        table = {name: dict(entry) for name, entry in code_versions.recorded().items()}
        table[stage]["version"] += 1
        monkeypatch.setattr(code_versions, "recorded", lambda: table)
        expected = _downstream_of({stage})
    assert _changed(before, _keys()) == expected
    assert expected and expected != set(before) or case == "toy_world_default"


def test_bundled_sweep_keys_do_not_depend_on_where_or_how_the_plan_is_built(tmp_path):
    """No absolute path, process hash seed or working directory leaks into a toy sweep's keys."""
    copy = tmp_path / "elsewhere" / "toy.yaml"
    copy.parent.mkdir()
    copy.write_text(bundled_sweep("toy").read_text())
    script = ("import json,sys; from pathlib import Path; from pipelines.plan import build_plan; "
              "from pipelines.preflight import load_sweep; p=Path(sys.argv[1]); "
              "print(json.dumps({r.label: r.key for r in build_plan(load_sweep(p), p).runs()}))")
    outputs = [subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
                              cwd=cwd, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for path, cwd, seed in ((bundled_sweep("toy"), Path.cwd(), "1"), (copy, tmp_path, "2"))]
    assert outputs[0] == outputs[1] and outputs[0].count('"') > 40


def test_plan_says_why_each_run_will_run(tmp_path):
    store = RunStore(tmp_path / "ws")
    first = build_plan(load_sweep(TOY_SMOKE), TOY_SMOKE)
    store.set_members("toy-smoke", {run: [{}] for run in first.runs()})  # what `run` records

    data = yaml.safe_load(TOY_SMOKE.read_text())
    data["midtrain"]["lr"] = 0.002
    data["recipes"]["qa_new"] = {"stable": data["recipes"]["qa_cot"]["stable"],
                                 "decay": {"tokens": 10240, "mix": {"qa_cot": 1.0}}}
    edited = tmp_path / "sweep.yaml"
    edited.write_text(yaml.safe_dump(data))
    plan = build_plan(load_sweep(edited), edited)
    why = {run.label: why_run(run, store.previous(run, "toy-smoke")) for run in plan.runs()
           if run.stage != "external"}
    assert why["midtrain control stable"] == "config: train.lr 0.001 → 0.002"
    assert why["midtrain qa_cot decay"] == "config: train.lr 0.001 → 0.002"  # continues at the stable LR
    assert why["probe qa_cot seed 0"] == "input changed: checkpoint"
    assert why["midtrain qa_new decay"] == "new"
    assert why["curate web"] == "new"  # unchanged: same key, nothing to compare (and it is cached)


@pytest.mark.parametrize("change", ["spec", "seeds", "difficulty_fixed", "difficulty_levels", "band"])
def test_probe_side_choices_never_rekey_curation_or_training(tmp_path, change):
    """Curation decontaminates against the whole candidate pool (every level), so how the probe
    picks its problems leaves the data and training stages alone."""
    data = yaml.safe_load(TOY_SMOKE.read_text())
    data["probe"].update({"spec": {"spec": "toy-cpu-v5"}, "seeds": {"seeds": [3]},
                          "difficulty_fixed": {"difficulty": "fixed"},
                          "difficulty_levels": {"train_set": {**data["probe"]["train_set"], "difficulty": [3, 4]}},
                          "band": {"difficulty_target": [0.1, 0.9]}}[change])
    edited = tmp_path / "sweep.yaml"
    edited.write_text(yaml.safe_dump(data))
    before, after = build_plan(load_sweep(TOY_SMOKE), TOY_SMOKE), build_plan(load_sweep(edited), edited)
    upstream = ("problems", "tokenizer", "curate", "midtrain")
    assert {r.key for r in before.runs() if r.stage in upstream} == {r.key for r in after.runs() if r.stage in upstream}
    assert {r.key for r in before.probes.values()}.isdisjoint(r.key for r in after.probes.values())


def test_the_selection_picks_from_the_pool_what_the_world_would_draw(tmp_path):
    """A fixed selection takes n problems in equal shares of its levels from a pool that has
    every level; they are the world's own draws at those levels, and the pool holds them all."""
    from data_recipes.toyworld import ToyWorld, ToyWorldConfig
    from pipelines.stages import STAGES, StageContext
    from pipelines.sweep import ProblemSet

    data = yaml.safe_load(TOY_SMOKE.read_text())
    data["probe"]["difficulty"] = "fixed"
    edited = tmp_path / "sweep.yaml"
    edited.write_text(yaml.safe_dump(data))
    plan = build_plan(load_sweep(edited), edited)
    pool_run, selection = plan.problems.inputs["pool"], plan.problems
    (tmp_path / "pool").mkdir()
    (tmp_path / "picked").mkdir()
    STAGES["problems"](pool_run, {}, tmp_path / "pool", StageContext(on_metrics=print))
    STAGES["select_problems"](selection, {"pool": tmp_path / "pool"}, tmp_path / "picked", StageContext(on_metrics=print))

    def ids(path):
        return [json.loads(line)["id"] for line in path.read_text().splitlines()]

    world = ToyWorld(pool_run.config.toy_world)
    train = ProblemSet(**data["probe"]["train_set"])  # n 32 at levels [1, 2]
    expected = [p.id for level in train.difficulty for p in world.problems("probe", train.n // 2, difficulty=level)]
    assert ids(tmp_path / "picked" / "train.jsonl") == expected
    pool_levels = {json.loads(line)["difficulty"] for line in (tmp_path / "pool" / "train.jsonl").read_text().splitlines()}
    assert pool_levels == set(world.cfg.difficulties) and set(expected) <= set(ids(tmp_path / "pool" / "train.jsonl"))


def test_a_classifier_model_keys_curation_by_its_content_and_is_read_beside_the_sweep(tmp_path, monkeypatch):
    """Retraining a classifier over the same file must re-curate (cached = current), and
    `model_url` is relative to the sweep file like every other path in it."""
    from data_recipes.classifier import train_classifier
    from data_recipes.toyworld import ToyWorld

    world = ToyWorld()
    rows = [{"text": d["text"], "label": label} for label, kind in (("math", "mathweb"), ("other", "web"))
            for d in world.documents(kind, 60)]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    here = tmp_path / "sweeps"
    here.mkdir()
    train_classifier(labelled, here / "math.bin", seed=0)
    data = yaml.safe_load(TOY_SMOKE.read_text())
    data["corpora"]["web"]["curation"]["filters"] = {"fasttext_classifier": {"model_url": "math.bin",
                                                                            "keep_labels": [["other", 0.5]]}}
    edited = here / "sweep.yaml"
    edited.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)  # not where the model is
    store = RunStore(tmp_path / "ws")
    first = build_plan(load_sweep(edited), edited)
    web = next(run for run in first.runs() if run.label == "curate web")
    assert web.config.corpus_config.curation.filters["fasttext_classifier"]["model_url"] == str(here / "math.bin")
    store.set_members("toy-smoke", {run: [{}] for run in first.runs()})

    train_classifier(labelled, here / "math.bin", seed=1)  # a new model in the same file
    second = build_plan(load_sweep(edited), edited)
    before, after = ({run.label: run.key for run in plan.runs()} for plan in (first, second))
    assert _changed(before, after) == _downstream_of({"curate web"}, edited)
    rerun = next(run for run in second.runs() if run.label == "curate web")
    assert why_run(rerun, store.previous(rerun, "toy-smoke")).startswith("config: filter_files.fasttext_classifier ")
    # a corpus without a filter file keeps the key it had before filter files were keyed
    assert "filter_files" not in next(run for run in second.runs() if run.label == "curate qa_cot").config


def test_corpus_files_key_curation_and_tokenizer_by_content_and_by_which_files_match(tmp_path, monkeypatch):
    """A corpus re-curates (and a tokenizer trained on it retrains) when its files change or its
    glob matches another shard (cached = current); planning twice gives the same keys."""
    from data_recipes.toyworld import ToyWorld

    docs = [{"id": d["id"], "text": d["text"]} for d in ToyWorld().documents("web", 40)]
    shard = tmp_path / "web" / "00000.jsonl"
    shard.parent.mkdir()
    shard.write_text("".join(json.dumps(d) + "\n" for d in docs[:20]))
    data = yaml.safe_load(TOY_SMOKE.read_text())
    data["corpora"]["web"]["source"] = {"type": "jsonl", "paths": ["web/*.jsonl"]}  # relative to the sweep
    edited = tmp_path / "sweep.yaml"
    edited.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path / "web")  # not where the sweep is
    first = _keys(edited)
    assert _keys(edited) == first
    tokenizer = next(r for r in build_plan(load_sweep(edited), edited).runs() if r.label == "tokenizer")
    assert tokenizer.config.sources["web"]["paths"] == [str(tmp_path / "web" / "*.jsonl")]
    affected = _downstream_of({"tokenizer"}, edited)  # toy-smoke's tokenizer trains on web

    shard.write_text("".join(json.dumps(d) + "\n" for d in docs[:19]))  # a record fewer
    edited_file = _keys(edited)
    assert _changed(first, edited_file) == affected
    (tmp_path / "web" / "00001.jsonl").write_text(json.dumps(docs[19]) + "\n")  # a new shard
    assert _changed(edited_file, _keys(edited)) == affected


BUNDLED_KEYS = Path(__file__).parent / "fixtures" / "bundled_sweep_keys.json"


def test_bundled_sweeps_keep_the_keys_they_had():
    """Every stage key of the toy sweeps, as recorded: a change that re-keys finished runs (a code
    version bump, a changed default) must say so by updating the record in the same commit."""
    recorded = json.loads(BUNDLED_KEYS.read_text())
    for name, keys in recorded.items():
        path = bundled_sweep(name)
        plan = build_plan(load_sweep(path), path)
        assert {run.label or run.stage: run.ref for run in plan.runs()} == keys, name


def test_a_random_reward_control_adds_one_control_probe_per_probe_and_rekeys_nothing(tmp_path):
    data = yaml.safe_load(TOY_SMOKE.read_text())
    data["probe"]["control"] = "random_reward"
    edited = tmp_path / "sweep.yaml"
    edited.write_text(yaml.safe_dump(data))
    before, after = build_plan(load_sweep(TOY_SMOKE), TOY_SMOKE), build_plan(load_sweep(edited), edited)
    assert {r.ref for r in before.runs()} < {r.ref for r in after.runs()}
    assert after.controls.keys() == after.probes.keys() and not before.controls
    for where, control in after.controls.items():
        probe = after.probes[where]
        assert control.inputs == probe.inputs and control.config.seed == probe.config.seed
        assert control.config.spec.reward_control == "random" != probe.config.spec.reward_control
        assert control.config.spec_hash != probe.config.spec_hash
        assert after.roles[control] == [{**after.roles[probe][0], "control": "random_reward"}]

    data["probe"]["control_seeds"] = [1]
    edited.write_text(yaml.safe_dump(data))
    one_seed = build_plan(load_sweep(edited), edited)
    assert one_seed.controls == {where: run for where, run in after.controls.items() if where[2] == 1}
