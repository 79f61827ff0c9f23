"""The toy world: determinism, disjoint splits, verifiable answers, well-formed corpora."""

import json
import re

import pytest

from data_recipes.toyworld import (
    CORPUS_KINDS,
    GAIN_VERBS,
    LOSE_VERBS,
    PROMPT_TEMPLATE,
    ToyWorld,
    ToyWorldConfig,
    split_of,
    write_problems,
)

GAIN = {v.split()[0] for v in GAIN_VERBS}
LOSE = {v.split()[0] for v in LOSE_VERBS}
QUESTION_RE = re.compile(r"^Question: (.+?)\nAnswer:", re.S)


QUESTION_PARTS = re.compile(r"^\w+ has (\d+) \w+\. Each day \w+ (\w+)(?: away)? (\d+)(?: more)?\. "
                            r"How many \w+ does \w+ have after (\d+) days?\?$")


def parse_question(question: str) -> tuple[str, int]:
    """(expression, answer) recomputed from the question text alone: start, daily change, days."""
    match = QUESTION_PARTS.match(question)
    assert match, question
    start, verb, change, days = int(match[1]), match[2], int(match[3]), int(match[4])
    assert verb in GAIN | LOSE, question
    op = "+" if verb in GAIN else "-"
    answer = start + days * change if op == "+" else start - days * change
    return str(start) + f"{op}{change}" * days, answer


def recompute(problem) -> int:
    value, change = problem.steps[0][0], problem.steps[0][2]
    for left, op, b, result in problem.steps:
        assert left == value and b == change and 1 <= b <= 9
        value = left + b if op == "+" else left - b
        assert value == result and 0 <= value <= 39
    return value


@pytest.fixture(scope="module")
def world():
    return ToyWorld(ToyWorldConfig(seed=3))


def test_deterministic_by_seed(world):
    again = ToyWorld(ToyWorldConfig(seed=3))
    assert world.problems("probe", 50) == again.problems("probe", 50)
    for kind in CORPUS_KINDS:
        assert list(world.documents(kind, 20, seed=1)) == list(again.documents(kind, 20, seed=1))
    other = ToyWorld(ToyWorldConfig(seed=4))
    assert world.problems("probe", 50) != other.problems("probe", 50)
    assert list(world.documents("qa_cot", 20, 1)) != list(world.documents("qa_cot", 20, 2))
    # a smaller request is a prefix of a larger one
    assert world.problems("eval", 10) == world.problems("eval", 40)[:10]


def test_splits_disjoint_and_answers_verifiable(world):
    by_split = {s: world.problems(s, 600 if s == "train" else 300) for s in ("train", "probe", "eval")}
    expressions = {s: {p.expression for p in ps} for s, ps in by_split.items()}
    assert not expressions["train"] & expressions["probe"]
    assert not expressions["train"] & expressions["eval"]
    assert not expressions["probe"] & expressions["eval"]
    for split, problems in by_split.items():
        assert len({p.question for p in problems}) == len(problems)
        for p in problems:
            assert split_of(p.expression, 0.10, 0.05) == split
            assert str(recompute(p)) == p.answer
            assert parse_question(p.question) == (p.expression, int(p.answer))
            assert p.difficulty == len(p.steps) and p.id.startswith(f"toy-{split}-d{p.difficulty}-")
            assert p.prompt == f"Question: {p.question}\nAnswer:"
    assert {p.difficulty for p in by_split["probe"]} == {1, 2, 3, 4}
    assert {p.difficulty for p in world.problems("probe", 30, difficulty=2)} == {2}


def test_problem_sets_prefer_new_arithmetic(world):
    three = world.problems("probe", 40, difficulty=3)
    assert len({p.expression for p in three}) == 40
    four = world.problems("probe", 120, difficulty=4)  # ~30 four-day probe expressions exist
    assert len({p.question for p in four}) == 120 and 20 <= len({p.expression for p in four}) <= 40
    mixed = world.problems("eval", 400)
    counts = [sum(p.difficulty == d for p in mixed) for d in (1, 2, 3, 4)]
    assert min(counts) > 70, counts


def test_corpora_are_well_formed_and_drawn_from_train(world):
    probe_questions = {p.question for p in world.problems("probe", 300) + world.problems("eval", 100)}
    for kind in CORPUS_KINDS:
        docs = list(world.documents(kind, 300, seed=0))
        assert len({d["id"] for d in docs}) == 300
        for doc in docs:
            text = doc["text"]
            assert doc["metadata"]["kind"] == kind and text.strip()
            assert not any(q in text for q in probe_questions)
            match = QUESTION_RE.match(text)
            if kind in ("qa_short", "qa_cot", "boxed_repeat"):
                assert match, text
                question = match.group(1)
                assert text.startswith(PROMPT_TEMPLATE.format(question=question))
                expression, answer = parse_question(question)
                assert split_of(expression, 0.10, 0.05) == "train"
                completion = text[len(PROMPT_TEMPLATE.format(question=question)):]
                assert re.findall(r"\\boxed\{(\d+)\}", completion) == [str(answer)]
                if kind == "qa_short":
                    assert completion == f" \\boxed{{{answer}}}"
                if kind == "qa_cot":  # faithful steps: one numbered equation per day, each fact correct
                    equations = re.findall(r"Day (\d+) of (\d+): (\d+) ([+-]) (\d+) = (\d+)\.", completion)
                    assert [(int(day), int(of)) for day, of, *_ in equations] == [
                        (day, len(equations)) for day in range(1, len(equations) + 1)]
                    equations = [eq[2:] for eq in equations]
                    assert all(a == b for (*_, b), (a, *_) in zip(equations, equations[1:]))
                    rebuilt = equations[0][0] + "".join(op + b for _, op, b, _ in equations)
                    assert rebuilt == expression
                    assert all(int(r) == (int(a) + int(b) if op == "+" else int(a) - int(b))
                               for a, op, b, r in equations)
                    assert completion.endswith(f"The answer is \\boxed{{{answer}}}.")
                if kind == "boxed_repeat":
                    assert completion.startswith(f" \\boxed{{{answer}}}.")
                    assert completion.count(f"The answer is {answer}.") >= 8
            elif kind == "mathweb":
                assert "Question:" not in text and re.search(r"\d+ [+-] \d+ = \d+\.", text)
    web = list(ToyWorld(ToyWorldConfig(seed=3, web_qa_rate=0.2)).documents("web", 1000))
    qa_items = [d for d in web if d["text"].startswith("Question: ")]
    assert 150 < len(qa_items) < 250
    assert all(d["metadata"]["difficulty"] == 1 and "\\boxed{" in d["text"] for d in qa_items)
    stories = [d for d in web if re.search(r"After \d+ days? \w+ has \d+ ", d["text"])]
    assert len(stories) > 500 and all("\\boxed" not in d["text"] for d in stories)
    # half of the stories close with a recap that restates their start and daily change
    recaps = [(d["text"], m) for d in stories
              if (m := re.search(r"(\w+) started with (\d+) (\w+), (\d) (more|fewer) each day\.", d["text"]))]
    assert 0.4 < len(recaps) / len(stories) < 0.6
    for text, m in recaps:
        verbs = "|".join(GAIN if m[5] == "more" else LOSE)
        assert re.search(rf"{m[1]} has {m[2]} {m[3]}\. Each day \w+ (?:{verbs})(?: away)? {m[4]}\b", text), text


def test_write_problems_jsonl(world, tmp_path):
    problems = world.problems("eval", 5)
    path = write_problems(problems, tmp_path / "sets" / "eval.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == [p.id for p in problems]
    assert set(rows[0]) == {"id", "question", "answer", "difficulty", "data_source"}
    assert rows[0]["data_source"] == "toy" and rows[0]["answer"] == problems[0].answer


def test_bad_requests_fail_clearly(world):
    with pytest.raises(ValueError, match="split"):
        world.problems("test", 3)
    with pytest.raises(ValueError, match="corpus kind"):
        next(world.documents("books", 3))
    with pytest.raises(ValueError, match="difficulties"):
        ToyWorldConfig(difficulties=[5])
    with pytest.raises(ValueError, match="Extra inputs"):
        ToyWorldConfig(sead=1)
    with pytest.raises(ValueError, match="boxed_repeat_min"):
        ToyWorldConfig(boxed_repeat_min=9, boxed_repeat_max=3)
