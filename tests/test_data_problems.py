"""Problem sets in GSM8K's, MATH's and mapped formats, read into midprobe's one format."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_recipes.problems import ProblemFields, ProblemFormatError, has_levels, read_problem_set
from pipelines.sweep import bundled_sweep
from pipelines.preflight import validate_sweep

REPO = Path(__file__).resolve().parents[1]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_format_is_read_directly(tmp_path):
    lines = (REPO / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()[:3]
    path = tmp_path / "gsm8k_train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    first = read_problem_set(path)[0]
    assert first["question"].startswith("Natalia sold clips to 48 of her friends")
    assert first["answer"] == "72" and first["solution"].endswith("72 clips altogether in April and May.")
    assert first["id"] == "gsm8k_train-1" and first["data_source"] == "gsm8k_train" and "difficulty" not in first
    big = read_problem_set(_jsonl(tmp_path / "big.jsonl", [{"question": "q", "answer": "so\n#### 1,250"}]))
    assert big[0]["answer"] == "1250"


def test_math_format_answer_field_or_last_boxed_and_levels(tmp_path):
    rows = [
        # hendrycks MATH: the answer is the solution's last \boxed{}, nested braces included
        {"problem": "Compute $1/2$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 3",
         "type": "Algebra"},
        # MATH-500: an answer field and an integer level
        {"problem": "What is $2+2$?", "solution": "\\boxed{4}", "answer": "4", "level": 1,
         "unique_id": "test/algebra/1.json"},
    ]
    problems = read_problem_set(_jsonl(tmp_path / "math.jsonl", rows))
    assert [(p["question"], p["answer"], p["difficulty"]) for p in problems] == [
        ("Compute $1/2$.", "\\frac{1}{2}", 3), ("What is $2+2$?", "4", 1)]
    assert problems[1]["id"] == "test/algebra/1.json" and has_levels(problems)


def test_other_formats_through_a_field_mapping_and_errors_name_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "custom.jsonl", [{"prompt": "What is 3+4?", "target": 7, "src": "mine", "key": 9}])
    fields = ProblemFields(question="prompt", answer="target", data_source="src", id="key")
    assert read_problem_set(path, fields) == [
        {"id": "9", "question": "What is 3+4?", "answer": "7", "data_source": "mine"}]
    with pytest.raises(ProblemFormatError, match=r"custom.jsonl: line 1 has no 'question' \(or MATH's 'problem', "
                                                 r"or a field mapping; has: key, prompt"):
        read_problem_set(path)
    with pytest.raises(ProblemFormatError, match=r"custom.jsonl: line 1 has no 'nope' \(mapped to answer\)"):
        read_problem_set(path, ProblemFields(question="prompt", answer="nope"))
    no_answer = _jsonl(tmp_path / "no_answer.jsonl", [{"problem": "x", "solution": "no box"}])
    with pytest.raises(ProblemFormatError, match="no_answer.jsonl: line 1 has no 'answer'"):
        read_problem_set(no_answer)


def _sweep(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(bundled_sweep("toy-smoke").read_text())
    mutate(data["probe"])
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_sweep_reads_gsm8k_files_and_refuses_auto_difficulty_without_levels(tmp_path):
    gsm8k = REPO / "data" / "gsm8k" / "train.jsonl"
    math = _jsonl(tmp_path / "math.jsonl", [{"problem": f"p{i}", "answer": str(i), "level": 1 + i % 3}
                                            for i in range(6)])

    def files(train, evals, difficulty):
        def mutate(probe):
            probe.update(train_set={"path": str(train)}, eval_set={"path": str(evals)}, difficulty=difficulty)
        return mutate

    assert validate_sweep(_sweep(tmp_path, files(gsm8k, math, "fixed"))) == []
    assert validate_sweep(_sweep(tmp_path, files(math, math, "auto"))) == []
    assert validate_sweep(_sweep(tmp_path, files(gsm8k, math, "auto"))) == [
        f"probe.train_set.path: {gsm8k}: no difficulty levels, and probe.difficulty: auto chooses among them "
        "(use difficulty: fixed, or give the problems a difficulty or level field)"]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    errors = validate_sweep(_sweep(tmp_path, files(bad, math, "fixed")))
    assert len(errors) == 1 and errors[0].startswith(f"probe.train_set.path: {bad}: line 1 has no 'question'")

    def mapped(probe):
        probe.update(train_set={"path": str(bad), "fields": {"question": "prompt", "answer": "prompt"}},
                     eval_set={"path": str(math)}, difficulty="fixed")
    assert validate_sweep(_sweep(tmp_path, mapped)) == []


def test_probe_command_refuses_an_unreadable_problem_file(tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "probe", str(tmp_path), "--spec", "toy-smoke-v1",
                             "--train-set", str(bad), "--eval-set", str(bad)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stderr.startswith(f"--train-set: {bad}: line 1 has no 'question'")
