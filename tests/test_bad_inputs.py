"""Bad input, table-driven: every case exits 2 with one line on stderr naming the file or field,
no traceback, and nothing written (no workspace, no file anywhere under the test's directory).

Cases run the real `midprobe` entry point in this process (imports are paid once), and none of
them trains anything: each must be refused before a stage starts.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from midtrain.spec import MODEL_PRESETS
from pipelines import cli

DOCS = [{"id": str(i), "text": f"Zoe has {i} shells. Each day she finds {i % 7 + 1} more."} for i in range(40)]
PROBLEMS = [{"id": f"p{i}", "question": f"What is {i} + 1?", "answer": str(i + 1), "data_source": "toy"}
            for i in range(8)]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _model_dir(path: Path, config: dict, tokens: int | None = None) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    if tokens:
        from tokenizers import Tokenizer
        from tokenizers.models import WordLevel

        Tokenizer(WordLevel({f"t{i}": i for i in range(tokens)}, unk_token="t0")).save(str(path / "tokenizer.json"))
    return path


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A valid sweep over a JSONL corpus and a problem file, with its workspace not yet created."""
    monkeypatch.chdir(tmp_path)
    _jsonl(tmp_path / "web.jsonl", DOCS)
    _jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    sweep = {
        "name": "bad-inputs", "workspace": str(tmp_path / "ws"),
        "tokenizer": {"vocab_size": 64, "train_on": ["web"]},
        "base": {"preset": "toy-xs", "pretrain": {"tokens": 4096, "mix": {"web": 1.0}}},
        "corpora": {"web": {"source": {"type": "jsonl", "paths": [str(tmp_path / "web.jsonl")]}},
                    "qa": {"source": {"type": "toy", "kind": "qa_short", "docs": 50}}},
        "recipes": {"control": {"stable": {"tokens": 4096, "mix": {"web": 1.0}},
                                "decay": {"tokens": 2048, "mix": {"web": 0.5, "qa": 0.5}}}},
        "midtrain": {"seq_length": 64, "micro_batch_size": 4},
        "probe": {"spec": "toy-smoke-v1", "train_set": {"path": str(tmp_path / "problems.jsonl")},
                  "eval_set": {"toy_split": "eval", "n": 8, "difficulty": [1, 2]}},
    }
    return tmp_path, sweep


RAW = "raw sweep text"  # a prepared sweep that is this text, not a dict


def _write(tmp: Path, sweep: dict) -> Path:
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _llama(vocab: int) -> dict:
    return MODEL_PRESETS["toy-xs"].model_copy(update={"vocab_size": vocab}).to_hf_config()


# Each case: (id, prepare(tmp, sweep) -> argv, the one stderr line as a regex).
# `prepare` edits the sweep dict (written afterwards as sweep.yaml) and the files it needs.
def _set(path: str, value):
    def prepare(tmp, sweep):
        *parents, last = path.split(".")
        node = sweep
        for key in parents:
            node = node[key]
        node[last] = value(tmp) if callable(value) else value
        return ["validate", "sweep.yaml"]
    return prepare


def _files(write):
    """Write broken input files with `write(tmp)`; validate the unchanged sweep."""
    def prepare(tmp, sweep):
        write(tmp)
        return ["validate", "sweep.yaml"]
    return prepare


def _raw(text: str):
    def prepare(tmp, sweep):
        sweep.clear()
        sweep[RAW] = text
        return ["validate", "sweep.yaml"]
    return prepare


def _argv(*argv, edit=None):
    def prepare(tmp, sweep):
        if edit:
            edit(tmp, sweep)
        return [a.format(tmp=tmp) for a in argv]
    return prepare


def _then(write, prepare):
    return lambda tmp, sweep: (write(tmp), prepare(tmp, sweep))[1]


def _parquet_without_text(tmp):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), tmp / "web.parquet")


_CLASSIFIER = {"model_url": "math.bin", "keep_labels": [["math", 0.5]]}  # relative to the sweep file


def _classifier(tmp):
    from data_recipes.classifier import train_classifier

    rows = [{"text": d["text"], "label": "math"} for d in DOCS] + [
        {"text": f"The {w} walked home along the river at dusk.", "label": "other"} for w in ("dog", "man", "cat")]
    train_classifier(_jsonl(tmp / "labelled.jsonl", rows), tmp / "math.bin")


def _rename_corpus(tmp, sweep):
    sweep["corpora"]["we/b"] = sweep["corpora"].pop("web")
    for stage in (sweep["base"]["pretrain"], sweep["recipes"]["control"]["stable"]):
        stage["mix"] = {"we/b": 1.0}
    sweep["recipes"]["control"]["decay"]["mix"] = {"we/b": 0.5, "qa": 0.5}
    sweep["tokenizer"]["train_on"] = ["we/b"]
    return ["validate", "sweep.yaml"]


def _hf_base(config, tokens, vocab_from="base"):
    def prepare(tmp, sweep):
        base = _model_dir(tmp / "base", config, tokens if vocab_from == "base" else None)
        sweep["base"] = {"hf_path": str(base)}
        sweep["tokenizer"] = {}
        if vocab_from == "path":
            sweep["tokenizer"]["path"] = str(_model_dir(tmp / "tok", {}, tokens))
        return ["validate", "sweep.yaml"]
    return prepare


def _problem_rows(rows):
    return lambda tmp: _jsonl(tmp / "problems.jsonl", rows)


CASES = [
    # sources: paths, globs, files that give no document with the configured text field
    ("source-path-missing", _set("corpora.web.source.paths", ["/nonexistent/web.jsonl"]),
     r"corpora\.web\.source\.paths\.0: no readable file matches '/nonexistent/web\.jsonl'"),
    ("source-glob-matches-nothing", _set("corpora.web.source.paths", lambda t: [str(t / "none-*.jsonl")]),
     r"corpora\.web\.source\.paths\.0: no readable file matches '.*none-\*\.jsonl'"),
    ("source-corrupt-jsonl", _files(lambda t: _jsonl(t / "web.jsonl", ["{oops", "[1, 2"])),
     r"corpora\.web\.source\.paths\.0: .*web\.jsonl: no usable document in the first 2 lines: line 1 is not JSON"),
    ("source-wrong-text-field", _set("corpora.web.source.text_field", "body"),
     r"corpora\.web\.source\.paths\.0: .*web\.jsonl: .*line 1 has no string field 'body' \(has: id, text\)"),
    ("source-not-utf8", _files(lambda t: (t / "web.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')),
     r"corpora\.web\.source\.paths\.0: .*web\.jsonl: not UTF-8 text"),
    ("source-empty-file", _files(lambda t: (t / "web.jsonl").write_text("")),
     r"corpora\.web\.source\.paths\.0: .*web\.jsonl: empty"),
    ("source-parquet-without-text-column", _then(_parquet_without_text, _set(
        "corpora.web.source", lambda t: {"type": "parquet", "paths": [str(t / "web.parquet")]})),
     r"corpora\.web\.source\.paths\.0: .*web\.parquet: no column 'text' \(has: id, body\)"),
    # a filter's model file: found relative to the sweep, a fastText model, with the labels it filters on
    ("classifier-model-missing", _set("corpora.web.curation", {"filters": {"fasttext_classifier": _CLASSIFIER}}),
     r"corpora\.web\.curation\.filters\.fasttext_classifier\.model_url: fastText classifier model not found: "
     r".*/math\.bin"),
    ("classifier-not-a-model", _then(lambda t: (t / "math.bin").write_text("not a model"), _set(
        "corpora.web.curation", {"filters": {"fasttext_classifier": _CLASSIFIER}})),
     r"corpora\.web\.curation\.filters\.fasttext_classifier\.model_url: .*math\.bin has wrong file format"),
    ("classifier-without-the-label", _then(_classifier, _set(
        "corpora.web.curation", {"filters": {"fasttext_classifier": {**_CLASSIFIER, "keep_labels": [["maths", 0.5]]}}})),
     r"corpora\.web\.curation\.filters\.fasttext_classifier\.model_url: label 'maths' is not in .*math\.bin "
     r"\(labels: \['math', 'other'\]\)"),
    ("classifier-without-a-model", _set("corpora.web.curation", {"filters": {"fasttext_classifier": {
        "keep_labels": [["math", 0.5]]}}}),
     r"corpora\.web\.curation\.filters\.fasttext_classifier\.model_url: missing"),
    # problem sets
    ("problems-without-answer", _files(_problem_rows(
        PROBLEMS[:1] + [{"id": "x", "question": "q", "data_source": "t"}])),
     r"probe\.train_set\.path: .*problems\.jsonl: line 2 has no 'answer'"),
    ("problems-duplicate-ids", _files(_problem_rows(PROBLEMS + PROBLEMS[:1])),
     r"probe\.train_set\.path: .*problems\.jsonl: line 9 repeats id 'p0' of line 1"),
    ("problems-not-json", _files(_problem_rows(["{truncated"])),
     r"probe\.train_set\.path: .*problems\.jsonl: line 1 is not JSON"),
    ("problems-file-missing", _set("probe.train_set.path", "/nonexistent/problems.jsonl"),
     r"probe\.train_set\.path: file not found: /nonexistent/problems\.jsonl"),
    ("difficulty-outside-the-world", _set("probe.eval_set.difficulty", [7]),
     r"probe\.eval_set\.difficulty: level\(s\) \[7\] are not in the toy world's difficulties \[1, 2, 3, 4\]"),
    # the base model and its tokenizer
    ("base-not-llama", _hf_base({"model_type": "gpt2", "vocab_size": 64}, 32),
     r"base\.hf_path: .*base is not a supported model \(model_type 'gpt2' is not 'llama' or 'qwen2'\)"),
    ("tokenizer-larger-than-embedding", _hf_base(_llama(50), 100, vocab_from="path"),
     r"tokenizer\.path: the tokenizer has 100 tokens, more than the base's embedding \(50 rows\)"),
    ("base-tokenizer-larger-than-embedding", _hf_base(_llama(50), 80),
     r"base\.hf_path: the tokenizer has 80 tokens, more than the base's embedding \(50 rows\)"),
    ("base-missing", _set("base", {"hf_path": "/nonexistent/model"}),
     r"base\.hf_path: no HF model directory at /nonexistent/model \(config\.json missing\)"),
    ("unknown-model-preset", _set("base.preset", "toy-huge"), r"base\.preset: unknown model preset 'toy-huge'"),
    # the sweep file itself
    ("mix-weight-nan", _set("recipes.control.stable.mix", {"web": float("nan")}),
     r"recipes\.control\.stable\.mix: weights must be finite and non-negative"),
    ("mix-weight-negative", _set("recipes.control.stable.mix", {"web": 2.0, "qa": -1.0}),
     r"recipes\.control\.stable\.mix: weights must be finite and non-negative"),
    ("mix-unknown-corpus", _set("recipes.control.stable.mix", {"wbe": 1.0}),
     r"recipes\.control\.stable\.mix: unknown corpus 'wbe'"),
    ("yaml-duplicate-key", _raw("name: a\nname: b\n"), r"sweep\.yaml: line 2 not valid YAML \(duplicate key 'name'\)"),
    ("yaml-invalid", _raw("name: [a\n"), r"sweep\.yaml: line \d+ not valid YAML"),
    ("yaml-not-a-mapping", _raw("- a\n"), r"sweep\.yaml: a sweep file must be a YAML mapping"),
    ("sweep-file-missing", lambda t, s: ["validate", "nothere.yaml"], r"nothere\.yaml: sweep file not found"),
    ("sweep-named-dotdot", _set("name", ".."), r"name: '\.\.' is not a safe name"),
    ("corpus-name-with-slash", _rename_corpus, r"corpora\.we/b: 'we/b' is not a safe name"),
    ("unknown-key", _set("probe.sped", "x"), r"probe\.sped: unknown key"),
    ("unknown-probe-spec", _set("probe.spec", "nope-v0"), r"probe\.spec: unknown probe spec 'nope-v0'"),
    ("budget-below-one-step", _set("recipes.control.stable.tokens", 1),
     r"recipes\.control\.stable\.tokens: 1 is below one optimizer step \(256 tokens = seq_length 64 x "
     r"micro_batch_size 4 x grad_accum 1 x 1 data-parallel\)"),
    ("executor-type-unknown-in-file", _set("executor", {"type": "kubernetes"}), r"executor\.type: Input should be"),
    # command-line options and workspaces (run / plan / report / probe / convert / status)
    ("run-executor-kubernetes", _argv("run", "sweep.yaml", "--executor", "kubernetes"),
     r"--executor: Input should be 'local', 'slurm' or 'ray' \(got 'kubernetes'\)"),
    ("run-parallel-0", _argv("run", "sweep.yaml", "--parallel", "0"), r"--parallel: Input should be greater than 0 \(got 0\)"),
    ("run-parallel-negative", _argv("run", "sweep.yaml", "--parallel", "-2"),
     r"--parallel: Input should be greater than 0 \(got -2\)"),
    ("run-seeds-not-integers", _argv("run", "sweep.yaml", "--seeds", "0,x"), r"--seeds: expected comma-separated integers"),
    ("run-workspace-is-a-file", _argv("run", "sweep.yaml", "-w", "{tmp}/web.jsonl"),
     r".*web\.jsonl: the workspace is a file, not a directory"),
    ("run-workspace-under-a-file", _argv("run", "sweep.yaml", "-w", "{tmp}/web.jsonl/ws"),
     r".*web\.jsonl/ws: the workspace cannot be created \(.*web\.jsonl is a file, not a directory\)"),
    # uncreatable even for root, whom permission bits do not stop
    *((f"{command}-workspace-uncreatable", _argv(*argv, "-w", "/sys/midprobe-ws"),
       r"^/sys/midprobe-ws: the workspace cannot be created \(/sys is not writable\): "
       r"(Permission denied|Operation not permitted|Read-only file system)$")
      for command, argv in (("validate", ("validate", "sweep.yaml")), ("plan", ("plan", "sweep.yaml")),
                            ("run", ("run", "sweep.yaml")),
                            ("probe", ("probe", "{tmp}/ckpt", "--toy", "--spec", "toy-smoke-v1")))),
    ("validate-sweep-workspace-uncreatable", _set("workspace", "/sys/midprobe-ws"),
     r"^/sys/midprobe-ws: the workspace cannot be created"),
    ("run-workspace-unwritable", _argv("run", "sweep.yaml", "-w", "/sys/kernel"),
     r"^/sys/kernel: the workspace cannot be written: (Permission denied|Operation not permitted|Read-only file system)$"),
    ("run-bad-sweep", _argv("run", "sweep.yaml", edit=lambda t, s: s.update(name="..")),
     r"sweep\.yaml: name: '\.\.' is not a safe name"),
    ("plan-bad-sweep", _argv("plan", "sweep.yaml", edit=lambda t, s: s["recipes"]["control"]["stable"].update(tokens=1)),
     r"sweep\.yaml: recipes\.control\.stable\.tokens: 1 is below one optimizer step"),
    ("plan-workspace-is-a-file", _argv("plan", "sweep.yaml", "-w", "{tmp}/web.jsonl"),
     r".*web\.jsonl: the workspace is a file"),
    ("report-without-workspace", _argv("report", "sweep.yaml"), r".*ws: not a midprobe workspace \(no index\.sqlite\)"),
    ("status-without-workspace", _argv("status", "-w", "{tmp}/ws"), r".*ws: not a midprobe workspace"),
    ("probe-parallel-0", _argv("probe", "{tmp}/ckpt", "--toy", "--spec", "toy-smoke-v1", "--parallel", "0"),
     r"--parallel: Input should be greater than 0 \(got 0\)"),
    ("probe-name-dotdot", _argv("probe", "{tmp}/ckpt", "--toy", "--spec", "toy-smoke-v1", "--name", ".."), r"--name: '\.\.' is not a safe name"),
    ("probe-unknown-spec", _argv("probe", "{tmp}/ckpt", "--toy", "--spec", "nope"), r"--spec: unknown probe spec 'nope'"),
    ("probe-train-set-without-answer", _argv(
        "probe", "{tmp}/ckpt", "--spec", "toy-smoke-v1", "--train-set", "{tmp}/bad.jsonl",
        "--eval-set", "{tmp}/problems.jsonl",
        edit=lambda t, s: _jsonl(t / "bad.jsonl", [{"id": "1", "question": "q", "data_source": "t"}])),
     r"--train-set: .*bad\.jsonl: line 1 has no 'answer'"),
    ("probe-checkpoint-not-llama", _argv(
        "probe", "{tmp}/ckpt", "--toy", "--spec", "toy-smoke-v1",
        edit=lambda t, s: _model_dir(t / "ckpt", {"model_type": "gpt2"})),
     r"checkpoint: .*ckpt is not a supported model \(model_type 'gpt2' is not 'llama' or 'qwen2'\)"),
    ("probe-checkpoint-missing", _argv("probe", "{tmp}/nothing", "--toy", "--spec", "toy-smoke-v1"),
     r".*nothing: not an HF checkpoint directory \(config\.json missing\)"),
    ("convert-empty-dir-to-hf", _argv("convert", "{tmp}/empty", "{tmp}/out", "--to", "hf",
                                      edit=lambda t, s: (t / "empty").mkdir()),
     r".*empty: not a midtrain checkpoint and no complete checkpoint under .*empty/state"),
    ("convert-empty-dir-to-megatron", _argv("convert", "{tmp}/empty", "{tmp}/out", "--to", "megatron",
                                            edit=lambda t, s: (t / "empty").mkdir()),
     r".*empty: not an HF model directory \(config\.json missing\)"),
    ("convert-not-llama", _argv("convert", "{tmp}/gpt2", "{tmp}/out", "--to", "megatron",
                                edit=lambda t, s: _model_dir(t / "gpt2", {"model_type": "gpt2"})),
     r"SRC: .*gpt2 is not a supported model \(model_type 'gpt2' is not 'llama' or 'qwen2'\)"),
    ("convert-unknown-target", _argv("convert", "{tmp}/web.jsonl", "{tmp}/out", "--to", "onnx"),
     r"--to: expected 'megatron' or 'hf', got 'onnx'"),
]


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


def _midprobe(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["midprobe", *argv])
    with pytest.raises(SystemExit) as exit_:  # anything else is an uncaught exception: a traceback
        cli.main()
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("prepare, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(setup, prepare, expected, monkeypatch, capsys):
    tmp, sweep = setup
    argv = prepare(tmp, sweep)
    (tmp / "sweep.yaml").write_text(sweep[RAW] if RAW in sweep else yaml.safe_dump(sweep))
    before = _tree(tmp)
    code, err = _midprobe(argv, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.search(expected, lines[0]), lines[0]
    assert _tree(tmp) == before  # nothing written: no workspace, no partial output, no report
    assert not (tmp / "ws").exists()


def test_plan_on_a_new_workspace_creates_nothing(setup, monkeypatch, capsys):
    tmp, sweep = setup
    _write(tmp, sweep)
    before = _tree(tmp)
    code, err = _midprobe(["plan", "sweep.yaml"], monkeypatch, capsys)
    assert code in (0, None), err
    assert _tree(tmp) == before and not (tmp / "ws").exists()


def test_report_with_no_finished_probe_is_refused(setup, monkeypatch, capsys):
    from pipelines.store import RunStore

    tmp, sweep = setup
    _write(tmp, sweep)
    RunStore(tmp / "ws")  # a workspace where nothing of this sweep has finished
    before = _tree(tmp)
    code, err = _midprobe(["report", "sweep.yaml"], monkeypatch, capsys)
    assert code == 2 and "no finished probe of sweep 'bad-inputs'" in err and len(err.strip().splitlines()) == 1
    assert _tree(tmp) == before
