import json
import subprocess
import sys

import pytest
from datatrove.data import Document

from data_recipes.decont import BenchmarkDecontFilter, normalize, write_index

SHORT = "Simplify $\\sqrt{242}$."  # 3 words: no 13-gram exists
LONG = ("A rectangular band formation is a formation with $m$ band members in each of $r$ rows, where $m$ and "
        "$r$ are integers. A particular band has less than 100 band members.")


def _block(tmp_path, n_grams=13):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": SHORT, "answer": "11\\sqrt{2}"}) + "\n"
                     + json.dumps({"problem": LONG, "solution": "98"}) + "\n")
    assert write_index([bench], n_grams, tmp_path / "index") == {"bench": 2}
    return BenchmarkDecontFilter(tmp_path / "index")


def _hit(block, text):
    doc = Document(text=text, id="d")
    return None if block.filter(doc) is True else doc.metadata["contamination"]


def test_short_items_match_whole_in_any_disguise(tmp_path):
    block = _block(tmp_path)
    for text in (SHORT, f"Homework help: {SHORT} We get $11\\sqrt2$.", "SIMPLIFY   $\\sqrt{ 242 }$ !!",
                 "simplify \\left(\\sqrt{242}\\right)"):
        hit = _hit(block, text)
        assert hit and hit["question"] == SHORT and hit["matched"] == "simplify sqrt 242", text
    assert _hit(block, "Simplify $\\sqrt{243}$.") is None
    assert _hit(block, "We simplify the square root of 242 in two steps.") is None


def test_long_items_match_by_ngram_and_name_the_span(tmp_path):
    block = _block(tmp_path)
    first_half = " ".join(LONG.split()[:14])
    hit = _hit(block, f"Forum post. {first_half.upper()} and so on")
    assert hit["task"] == "bench" and hit["item"] == "2" and len(hit["matched"].split()) == 13
    assert _hit(block, "A rectangular band formation has members in rows.") is None


def test_normalisation():
    assert normalize("10,\\!080 and \\dfrac{1}{2} \\left( x \\right)") == normalize("10, 080 and \\frac{1}{2} (x)")
    assert normalize("[asy]draw((0,0)--(1,1));[/asy] Find $x$.") == "find x"


def test_curate_command_writes_artifacts_and_lists_removed_documents(tmp_path):
    docs = tmp_path / "docs.jsonl"
    rows = [{"id": "leak", "text": f"Practice set. {SHORT} Answer: $11\\sqrt{{2}}$, since 242 = 121 * 2."},
            {"id": "fine", "text": "Compute 17 + 25 = 42, then 42 * 2 = 84, so the total is 84 apples."},
            {"id": "prose", "text": "The weather in spring is mild and the gardens bloom along the river walk."}]
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": SHORT, "answer": "11\\sqrt{2}"}) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines.cli", "curate", str(docs), "--preset", "math", "--out", str(out),
           "--decontaminate-against", str(bench)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith(f"{out}: 3 docs in, 1 out")
    summary = json.loads((out / "curation.json").read_text())
    assert summary["docs_in"] == 3 and summary["docs_out"] == 1 and summary["contaminated"] == {"bench": 1}
    assert summary["dropped"]["math_quality"]["no_math"] == 1 and summary["shards"] == []
    report = [json.loads(line) for line in (out / summary["contamination_report"]).read_text().splitlines()]
    assert [(r["doc_id"], r["matched"]) for r in report] == [("leak", "simplify sqrt 242")]

    bad = subprocess.run([*cmd[:4], str(tmp_path / "missing.jsonl"), *cmd[5:]], capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.jsonl: file not found" in bad.stderr
    bad = subprocess.run([*cmd[:6], "strict", *cmd[7:]], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown preset 'strict'" in bad.stderr


@pytest.mark.slow
def test_every_planted_item_caught_at_13_grams_with_few_false_removals():
    """Held-out GSM8K/MATH train items as the benchmark (no test split): README's figures."""
    from data_recipes.decont_calibration import measure

    result = measure(13)
    for disguise, caught in result["recall"].items():
        found, planted = map(int, caught.split("/"))
        assert found == planted, (disguise, caught)
    removed, corpus = map(int, result["false_removals"].split("/"))
    assert removed / corpus < 0.02, result["false_removals"]


INSTRUCTION = "Solve the following math problem step by step. Put your final answer within \\boxed{}."
REMINDER = "Remember: the last line of your response must be the boxed answer and nothing else."


def _wrapped_benchmark(tmp_path):
    """An eval file as they come: every item between the same instruction and reminder. Items are
    *train* problems: short MATH-train ones (3-12 words of their own) and GSM8K-train ones."""
    from data_recipes.calibration import gsm8k_train, math_train

    words = [len(normalize(r["problem"]).split()) for r in math_train()]
    short = [r for r, n in zip(math_train(), words) if 3 <= n < 13][:30]
    long = list(gsm8k_train()[:30])
    items = ([{"question": r["problem"], "answer": r["solution"]} for r in short]
             + [{"question": r["question"], "answer": r["answer"]} for r in long])
    bench = tmp_path / "wrapped.jsonl"
    bench.write_text("".join(json.dumps({"question": f"{INSTRUCTION}\n\n{i['question']}\n\n{REMINDER}",
                                         "answer": i["answer"]}) + "\n" for i in items))
    write_index([bench], 13, tmp_path / "index")
    # planted: 10 short and 10 long, in four disguises each
    return BenchmarkDecontFilter(tmp_path / "index"), items[:10] + items[30:40], bench


def test_wrapped_benchmark_every_planted_item_caught(tmp_path):
    import random

    from data_recipes.decont_calibration import disguises

    block, planted, bench = _wrapped_benchmark(tmp_path)
    rng = random.Random(0)
    missed, caught = [], 0
    for item in planted:
        forms = disguises(item, rng)
        for kind in ("verbatim", "with_solution", "embedded", "case_punctuation"):
            if block.filter(Document(text=forms[kind], id="p")) is True:
                missed.append((kind, item["question"]))
            else:
                caught += 1
    assert not missed and caught == 80, missed
    wrapped_rows = [json.loads(line)["question"] for line in bench.read_text().splitlines()]
    assert all(block.filter(Document(text=row, id="w")) is not True for row in wrapped_rows)
    shared = json.loads((tmp_path / "index" / "shared_text.json").read_text())["wrapped"]
    assert shared == {normalize(f"{INSTRUCTION} {REMINDER}"): 60} or set(shared) == {
        normalize(INSTRUCTION), normalize(REMINDER)}, shared


def test_wrapped_benchmark_instruction_alone_removes_nothing(tmp_path):
    from data_recipes.calibration import gsm8k_train

    block, _, _ = _wrapped_benchmark(tmp_path)
    clean = [f"{INSTRUCTION}\n\n{r['question']}\n\n{REMINDER}" for r in gsm8k_train()[1000:1020]]
    clean += [f"Our tutoring guide tells students: {INSTRUCTION} {REMINDER} It works for any problem.",
              INSTRUCTION.upper(), f"{REMINDER} {INSTRUCTION}"]
    assert [text for text in clean if block.filter(Document(text=text, id="c")) is not True] == []


def test_unwrapped_problem_sets_have_no_shared_text():
    """Templated sets (the toy world's pools, the GSM8K-train probe sets) index as they always
    did: no 4-gram is in half of their items, so nothing is left out."""
    from pathlib import Path

    from data_recipes.decont import own_runs
    from data_recipes.toyworld import ToyWorld, ToyWorldConfig
    from data_recipes.words import RegexWordTokenizer

    words = RegexWordTokenizer()
    world = ToyWorld(ToyWorldConfig())
    sets = {split: [p.question for level in world.cfg.difficulties for p in world.problems(split, 64, level)]
            for split in ("probe", "eval")}
    data = Path(__file__).resolve().parent.parent / "data" / "gsm8k"
    sets |= {p.name: [json.loads(line)["question"] for line in p.read_text().splitlines()]
             for p in sorted(data.glob("*-*.jsonl"))}
    for name, questions in sets.items():
        items_words = [words.word_tokenize(normalize(q)) for q in questions]
        runs, shared = own_runs(items_words)
        assert shared == {} and runs == [[w] for w in items_words], (name, shared)
