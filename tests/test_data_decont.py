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
