"""curate_corpus end to end on small corpora: Megatron round trip, dedup, decontamination, errors, resume."""

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from data_recipes.curate import CorpusConfig, ExecutorConfig, curate_corpus
from data_recipes.sources import iter_source_texts
from data_recipes.tokenizer import train_tokenizer
from data_recipes.toyworld import CORPUS_KINDS, ToyWorld, ToyWorldConfig, write_problems

WORLD = ToyWorldConfig(seed=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    world = ToyWorld(WORLD)
    texts = [d["text"] for kind in CORPUS_KINDS for d in world.documents(kind, 300)]
    tokenizer = train_tokenizer(texts, 384, root / "tokenizer")
    probe = write_problems(world.problems("probe", 256), root / "problems" / "probe.jsonl")
    evals = write_problems(world.problems("eval", 64), root / "problems" / "eval.jsonl")
    return {"root": root, "world": world, "tokenizer": tokenizer, "benchmarks": [probe, evals]}


def _jsonl(folder):
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl.gz")) for line in gzip.open(path, "rt")]


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_toy_corpus_round_trips_through_megatron(env):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    out = env["root"] / "qa_cot"
    corpus = CorpusConfig(source={"type": "toy", "kind": "qa_cot", "docs": 600})
    summary = curate_corpus(corpus, env["tokenizer"], env["benchmarks"], out, ExecutorConfig(), toy_world=WORLD)

    assert summary == json.loads((out / "curation.json").read_text())
    assert summary["preset"] == "qa" and summary["docs_in"] == 600
    assert set(summary["contaminated"]) == {"probe", "eval"}
    assert set(summary["dropped"]) == {"prose_repetition", "math_quality", "minhash_dedup", "decontamination"}
    dropped = sum(step["total"] for step in summary["dropped"].values())
    assert summary["docs_out"] == 600 - dropped > 570

    tok = AutoTokenizer.from_pretrained(env["tokenizer"])
    curated = _jsonl(out / "curated")
    decoded, tokens = [], 0
    for prefix in summary["prefixes"]:
        dataset = IndexedDataset(str(out / prefix))
        for i in range(len(dataset)):
            ids = dataset[i].tolist()
            assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id
            decoded.append(tok.decode(ids[:-1]))
            tokens += len(ids)
    assert decoded == [d["text"] for d in curated]
    assert summary["docs_out"] == len(decoded) and summary["tokens"] == tokens
    assert summary["shards"][0]["documents"] == len(decoded)


def test_documents_get_bos_and_eos_as_a_tokenizer_that_differs_says(env, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from data_recipes.tokenizer import document_special_tokens
    from rl_probe.prompts import leading_special_ids
    from test_probe_helpers import llama_style_tokenizer

    texts = [d["text"] for d in env["world"].documents("qa_cot", 300)]
    tok = llama_style_tokenizer(tmp_path / "llama-tok", texts, vocab_size=384)
    assert document_special_tokens(tmp_path / "llama-tok") == ("<s>", "</s>")
    assert tok.convert_ids_to_tokens(leading_special_ids(tok)) == ["<s>"]  # what the probe's prompts start with
    corpus = CorpusConfig(source={"type": "toy", "kind": "qa_cot", "docs": 60})
    summary = curate_corpus(corpus, tmp_path / "llama-tok", [], tmp_path / "out", ExecutorConfig(), toy_world=WORLD)
    curated = _jsonl(tmp_path / "out" / "curated")
    dataset = IndexedDataset(str(tmp_path / "out" / summary["prefixes"][0]))
    assert len(dataset) == len(curated) > 50
    for i, doc in enumerate(curated):
        expected = tok(doc["text"], add_special_tokens=False)["input_ids"]
        assert dataset[i].tolist() == [tok.bos_token_id, *expected, tok.eos_token_id]


def _near_copy(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    i = rng.choice([i for i, w in enumerate(words) if w.isalpha() and len(w) > 3])
    words[i] = "really"
    return " ".join(words) + " Thanks for reading."


def test_planted_duplicates_and_contamination_are_removed_and_nothing_else(env, tmp_path):
    rng = random.Random(0)
    world = env["world"]
    # mathweb docs with at least two worked examples: long enough that one changed word plus a
    # footer is a near-duplicate (Jaccard ~0.9), as in real scraped copies
    docs = [d for d in world.documents("mathweb", 200, seed=5) if d["text"].count("\n\n") >= 2]
    originals = docs[:30]
    copies = [{"id": f"copy-{d['id']}", "text": _near_copy(d["text"], rng)} for d in originals]
    questions = [json.loads(line)["question"] for path in env["benchmarks"] for line in path.open()]
    probe_qs, eval_qs = questions[:10], questions[-8:]
    leaks = [{"id": f"leak-{i}", "text": f"Practice set. {q} Work it out carefully, step by step."}
             for i, q in enumerate(probe_qs + eval_qs)]
    rows = [{"id": d["id"], "text": d["text"]} for d in docs] + copies + leaks
    rng.shuffle(rows)
    rows += ["{broken json", "[1, 2]", json.dumps({"id": "no-text", "body": "x"})]
    source = _write_jsonl(tmp_path / "mix.jsonl", rows)
    with source.open("ab") as f:  # a line that is not UTF-8: skipped and counted, not fatal
        f.write(b'{"id": "latin-1", "text": "caf\xe9"}\n')

    out = tmp_path / "out"
    corpus = CorpusConfig(source={"type": "jsonl", "paths": [str(tmp_path / "*.jsonl")]},
                          curation={"preset": "math", "filters": {"math_quality": {"min_words": 3}}})
    summary = curate_corpus(corpus, env["tokenizer"], env["benchmarks"], out, ExecutorConfig(), name="mix")

    assert summary["corrupt_lines"] == 3 and summary["missing_text"] == 1
    assert summary["bad_lines_by_file"] == [{"file": str(source), "lines": len(rows) + 1, "bad_lines": 3,
                                             "first_bad_line": len(rows) - 2}]
    assert summary["contaminated"] == {"probe": 10, "eval": 8}
    removed_leaks = {d["id"] for d in _jsonl(out / "excluded" / "decontamination")}
    assert removed_leaks == {d["id"] for d in leaks}
    filtered_ids = {d["id"] for d in _jsonl(out / "filtered")}
    kept_ids = {d["id"] for d in _jsonl(out / "curated")}
    pair_ids = {d["id"] for d in originals} | {d["id"] for d in copies}
    for original in originals:
        pair = {original["id"], f"copy-{original['id']}"} & filtered_ids
        if len(pair) == 2:  # both passed the quality filters: exactly one must survive dedup
            assert len(pair & kept_ids) == 1, pair
    dedup_removed = {d["id"] for d in _jsonl(out / "excluded" / "minhash_dedup")}
    assert len(dedup_removed) >= 28 and dedup_removed <= pair_ids  # recall, and no false removals
    assert summary["dropped"]["minhash_dedup"]["total"] == len(dedup_removed)


def test_empty_corpus_names_corpus_and_filter(env, tmp_path):
    prose = [{"id": str(i), "text": f"The garden had {w} flowers near the old stone wall today."}
             for i, w in enumerate(["red", "blue", "white", "tall", "small", "wild", "pale", "bright"])]
    _write_jsonl(tmp_path / "prose.jsonl", prose)
    corpus = CorpusConfig(source={"type": "jsonl", "paths": [str(tmp_path / "prose.jsonl")]},
                          curation={"preset": "math"})
    with pytest.raises(ValueError, match=r"corpus 'gardens' is empty after curation: step 'math_quality'.*no_math"):
        curate_corpus(corpus, env["tokenizer"], [], tmp_path / "out", name="gardens")

    _write_jsonl(tmp_path / "broken.jsonl", ["{oops", "not json"])
    corpus = CorpusConfig(source={"type": "jsonl", "paths": [str(tmp_path / "broken.jsonl")]})
    with pytest.raises(ValueError, match=r"corpus 'broken': \S*broken.jsonl: 2 of 2 lines are unreadable "
                                         r"\(first: line 1\), more than the 5% a source file may have"):
        curate_corpus(corpus, env["tokenizer"], [], tmp_path / "out2", name="broken")
    with pytest.raises(ValueError, match=r"corpus 'nothing': no files match"):
        curate_corpus(CorpusConfig(source={"type": "jsonl", "paths": [str(tmp_path / "none*.jsonl")]}),
                      env["tokenizer"], [], tmp_path / "out3", name="nothing")


def test_resume_after_crash_gives_the_same_result(env, tmp_path):
    out = tmp_path / "web"
    corpus = CorpusConfig(source={"type": "toy", "kind": "web", "docs": 300})
    first = curate_corpus(corpus, env["tokenizer"], env["benchmarks"], out, toy_world=WORLD)
    assert first["preset"] == "web" and set(first["dropped"]) >= {"gopher_quality", "c4_quality"}
    # a crash during the last stage: its completion marker and outputs are gone
    (out / "logs" / "dedup_decont_tokenize" / "completions" / "00000").unlink()
    shutil.rmtree(out / "megatron")
    (out / "curation.json").unlink()
    second = curate_corpus(corpus, env["tokenizer"], env["benchmarks"], out, toy_world=WORLD)
    strip = lambda s: {k: v for k, v in s.items() if k != "seconds"}  # noqa: E731
    assert strip(second) == strip(first)
    assert second["seconds"]["filter"] < first["seconds"]["filter"]  # completed stages are skipped


def test_iter_source_texts_matches_source(env, tmp_path):
    toy = CorpusConfig(source={"type": "toy", "kind": "qa_short", "docs": 5})
    assert list(iter_source_texts(toy, WORLD)) == [d["text"] for d in env["world"].documents("qa_short", 5)]
    _write_jsonl(tmp_path / "a.jsonl", [{"body": "one"}, "{bad", {"body": "two"}])
    local = CorpusConfig(source={"type": "jsonl", "paths": [str(tmp_path / "a.jsonl")], "text_field": "body"})
    assert list(iter_source_texts(local)) == ["one", "two"]


def test_exact_dedup_removes_only_identical_text(env, tmp_path):
    docs = [{"id": d["id"], "text": d["text"]} for d in env["world"].documents("qa_cot", 120, seed=8)]
    unique = {d["text"]: d for d in docs}  # the toy stream may itself repeat a short problem
    copies = [{"id": f"ws-{d['id']}", "text": d["text"].replace(" ", "  ", 1) + "\n"} for d in docs[:10]]
    near = [{"id": f"near-{d['id']}", "text": d["text"].replace("Question:", "Question :")} for d in docs[10:20]]
    _write_jsonl(tmp_path / "qa.jsonl", docs + copies + near)
    corpus = CorpusConfig(source={"type": "jsonl", "paths": [str(tmp_path / "qa.jsonl")]},
                          curation={"preset": "none", "dedup": {"method": "exact"}})
    summary = curate_corpus(corpus, env["tokenizer"], [], tmp_path / "out", name="qa")
    removed = {d["id"] for d in _jsonl(tmp_path / "out" / "excluded" / "exact_dedup")}
    assert {c["id"] for c in copies} <= removed
    assert len(removed) == len(docs) - len(unique) + len(copies)
    assert summary["dropped"] == {"exact_dedup": {"total": len(removed)}}
    assert summary["docs_out"] == len(unique) + len(near)


def test_a_trained_classifier_keeps_the_math_of_a_mixed_corpus(env, tmp_path):
    """The FineMath-style route: label a sample, train, and curate with datatrove's classifier block."""
    from data_recipes.classifier import train_classifier

    world = env["world"]
    labelled = [{"text": d["text"], "label": label} for label, kind in (("math", "mathweb"), ("other", "web"))
                for d in world.documents(kind, 150, seed=11)]
    train_classifier(_write_jsonl(tmp_path / "labelled.jsonl", labelled), tmp_path / "math.bin")
    math = [{"id": f"math-{d['id']}", "text": d["text"]} for d in world.documents("mathweb", 100, seed=12)]
    web = [{"id": f"web-{d['id']}", "text": d["text"]} for d in world.documents("web", 100, seed=12)]
    _write_jsonl(tmp_path / "mixed.jsonl", math + web)
    corpus = CorpusConfig(source={"type": "jsonl", "paths": [str(tmp_path / "mixed.jsonl")]},
                          curation={"preset": "none", "dedup": {"method": "none"},
                                    "filters": {"fasttext_classifier": {"model_url": str(tmp_path / "math.bin"),
                                                                        "keep_labels": [["math", 0.5]]}}})
    summary = curate_corpus(corpus, env["tokenizer"], [], tmp_path / "out", name="mixed")
    kept = {d["id"] for d in _jsonl(tmp_path / "out" / "curated")}
    assert len(kept & {d["id"] for d in math}) >= 95 and len(kept & {d["id"] for d in web}) <= 5
    assert summary["dropped"]["fasttext_classifier"]["total"] == 200 - len(kept)


@pytest.mark.parametrize("source_type", ["parquet", "hf"])
def test_parquet_and_hf_sources(env, tmp_path, source_type):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [d["text"] for d in env["world"].documents("qa_short", 40, seed=4)]
    if source_type == "parquet":
        pq.write_table(pa.table({"body": texts, "key": [f"p{i}" for i in range(40)]}), tmp_path / "part.parquet")
        source = {"type": "parquet", "paths": [str(tmp_path / "*.parquet")], "text_field": "body", "id_field": "key"}
    else:
        _write_jsonl(tmp_path / "hf.jsonl", [{"body": t} for t in texts])
        source = {"type": "hf", "path": "json", "data_files": [str(tmp_path / "hf.jsonl")], "text_field": "body"}
    corpus = CorpusConfig(source=source, curation={"preset": "qa", "dedup": {"method": "exact"}})
    summary = curate_corpus(corpus, env["tokenizer"], [], tmp_path / "out", name=source_type)
    assert summary["docs_in"] == 40 and summary["preset"] == "qa"
    assert {d["text"] for d in _jsonl(tmp_path / "out" / "curated")} <= set(texts)
    assert summary["docs_out"] == len(_jsonl(tmp_path / "out" / "curated")) >= 35


def test_config_errors_are_caught_at_validation():
    from pydantic import ValidationError

    toy = {"type": "toy", "kind": "web", "docs": 3}
    with pytest.raises(ValidationError, match="unknown filter 'bogus'"):
        CorpusConfig(source=toy, curation={"filters": {"bogus": {}}})
    with pytest.raises(ValidationError, match=r"filter 'math_quality' has no argument\(s\) \['min_word'\]"):
        CorpusConfig(source=toy, curation={"filters": {"math_quality": {"min_word": 3}}})
    with pytest.raises(ValidationError):
        CorpusConfig(source={"type": "toy", "kind": "novels", "docs": 3})
    with pytest.raises(ValidationError, match="slurm executor needs slurm.partition"):
        ExecutorConfig(type="slurm", slurm={"time": "1:00:00"})
    assert CorpusConfig(source=toy).preset() == "web"
    assert CorpusConfig(source={**toy, "kind": "boxed_repeat"}).preset() == "none"
    assert CorpusConfig(source={"type": "jsonl", "paths": ["x"]}, curation={"preset": "math"}).preset() == "math"


def test_toy_corpus_split_over_tasks_matches_one_task(env, tmp_path):
    corpus = CorpusConfig(source={"type": "toy", "kind": "qa_short", "docs": 301})
    one = curate_corpus(corpus, env["tokenizer"], env["benchmarks"], tmp_path / "one", toy_world=WORLD)
    two = curate_corpus(corpus, env["tokenizer"], env["benchmarks"], tmp_path / "two",
                        ExecutorConfig(tasks=2, workers=1), toy_world=WORLD)
    assert len(two["prefixes"]) == 2 and [s["documents"] > 0 for s in two["shards"]] == [True, True]
    for key in ("docs_in", "docs_out", "tokens", "dropped", "contaminated"):
        assert one[key] == two[key], key
    assert [d["text"] for d in _jsonl(tmp_path / "one" / "curated")] == \
        [d["text"] for d in _jsonl(tmp_path / "two" / "curated")]


def _curate_in_child(tokenizer, benchmarks, out):
    import os

    os.setpgrp()  # its own process group, so that the kill takes datatrove's workers with it
    corpus = CorpusConfig(source={"type": "toy", "kind": "web", "docs": 6000})
    curate_corpus(corpus, tokenizer, benchmarks, out, toy_world=WORLD)


def test_kill_9_mid_curation_then_rerun_matches_an_uninterrupted_run(env, tmp_path):
    import multiprocessing
    import os
    import signal
    import time

    corpus = CorpusConfig(source={"type": "toy", "kind": "web", "docs": 6000})
    reference = curate_corpus(corpus, env["tokenizer"], env["benchmarks"], tmp_path / "reference", toy_world=WORLD)

    out = tmp_path / "killed"
    child = multiprocessing.get_context("spawn").Process(
        target=_curate_in_child, args=(env["tokenizer"], env["benchmarks"], out))
    child.start()
    deadline = time.time() + 120  # kill once the filter stage has finished and dedup is under way
    while time.time() < deadline and not (out / "logs" / "minhash_signatures").exists():
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)  # the crash of a whole stage process tree
    child.join()
    assert not (out / "curation.json").exists()  # nothing published by the killed run

    resumed = curate_corpus(corpus, env["tokenizer"], env["benchmarks"], out, toy_world=WORLD)
    strip = lambda s: {k: v for k, v in s.items() if k != "seconds"}  # noqa: E731
    assert strip(resumed) == strip(reference)
    for prefix in reference["prefixes"]:
        for suffix in (".bin", ".idx"):
            assert (out / (prefix + suffix)).read_bytes() == (tmp_path / "reference" / (prefix + suffix)).read_bytes()


def test_ray_executor_on_a_local_instance_matches_local(env, tmp_path):
    import ray

    corpus = CorpusConfig(source={"type": "toy", "kind": "qa_cot", "docs": 400})
    local = curate_corpus(corpus, env["tokenizer"], env["benchmarks"], tmp_path / "local", toy_world=WORLD)
    try:
        on_ray = curate_corpus(corpus, env["tokenizer"], env["benchmarks"], tmp_path / "ray", toy_world=WORLD,
                               executor=ExecutorConfig(type="ray", ray_address="local"))
    finally:
        ray.shutdown()
    strip = lambda s: {k: v for k, v in s.items() if k != "seconds"}  # noqa: E731
    assert strip(on_ray) == strip(local)


GSM8K = str(Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "train.jsonl")


def test_gsm8k_qa_source_renders_worked_and_short_documents():
    from data_recipes.sources import QASource

    record = json.loads(open(GSM8K).readline())  # Natalia's clips: 48/2 = 24, 48+24 = 72
    worked = QASource(paths=[GSM8K], style="worked").render(record)
    short = QASource(paths=[GSM8K], style="short").render(record)
    assert worked == (f"Question: {record['question']}\nAnswer: Natalia sold 48/2 = 24 clips in May.\n"
                      "Natalia sold 48+24 = 72 clips altogether in April and May.\nThe final answer is \\boxed{72}.")
    assert short == f"Question: {record['question']}\nAnswer: \\boxed{{72}}"
    thousands = {"question": "q", "answer": "1,000 + 200 = <<1000+200=1200>>1,200\n#### 1,200"}
    assert QASource(paths=[GSM8K], style="short", template="{question} -> {answer}").render(thousands) == "q -> \\boxed{1200}"


def test_gsm8k_qa_source_renders_the_same_math_as_prose_and_without_the_box():
    from data_recipes.sources import QASource

    record = json.loads(open(GSM8K).readline())
    prose = QASource(paths=[GSM8K], style="prose", template="{question}\n{answer}").render(record)
    assert prose == (f"{record['question']}\nNatalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips "
                     "altogether in April and May. So the answer is 72.")
    boxless = QASource(paths=[GSM8K], style="boxless").render(record)
    assert boxless == QASource(paths=[GSM8K], style="worked").render(record).replace("\\boxed{72}", "72")
    assert "boxed" not in prose + boxless


def test_gsm8k_corpus_is_decontaminated_against_probe_problems_from_the_same_file(env, tmp_path):
    rows = [json.loads(line) for line in open(GSM8K)][:60]
    _write_jsonl(tmp_path / "gsm8k.jsonl", rows + ["{not json"])
    probe = _write_jsonl(tmp_path / "probe.jsonl", [{"id": f"p{i}", "question": r["question"], "answer": "0",
                                                     "data_source": "gsm8k"} for i, r in enumerate(rows[:5])])
    corpus = CorpusConfig(source={"type": "qa", "paths": [str(tmp_path / "gsm8k.jsonl")], "style": "worked"},
                          curation={"preset": "none"})
    with pytest.raises(ValueError, match=r"gsm8k.jsonl:61: not a gsm8k record"):
        curate_corpus(corpus, env["tokenizer"], [probe], tmp_path / "bad", name="cot")
    _write_jsonl(tmp_path / "gsm8k.jsonl", rows)
    summary = curate_corpus(corpus, env["tokenizer"], [probe], tmp_path / "out", name="cot")
    assert summary["docs_in"] == 60 and summary["docs_out"] == 55
    assert sum(summary["contaminated"].values()) == 5
    kept = _jsonl(tmp_path / "out" / "excluded" / "decontamination")
    assert sorted(d["id"] for d in kept) == [f"gsm8k:{i}" for i in range(1, 6)]
