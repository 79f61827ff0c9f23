"""The toy world: verifiable arithmetic word problems and the corpora built around them.

A problem is a start value and one change that repeats for 1..4 days ("Tom has 7
apples. Each day he gets 3 more. How many apples does he have after 4 days?"): the
same single-digit fact applied k times, every intermediate value within 0..max_value.
One day is a fact a ~1M-parameter model learns cheaply; k days answered directly
need k facts composed in one forward pass, while a worked solution takes one fact
per day. So what mid-training recipes change is the *format and strategy* a model
brings to the probe.

Splits are disjoint by construction: a problem's split is a hash of its arithmetic
alone (start and operations, not names or wording), independent of the seed, so no
probe or eval computation appears in any train-derived corpus of any world with the
same split fractions.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Bumped whenever the generator's output changes: it is part of every stage key that
# consumes toy data, so cached runs made by an older toy world are never reused.
TOY_WORLD_VERSION = 6
CORPUS_KINDS = ("web", "mathweb", "qa_short", "qa_cot", "boxed_repeat")
SPLITS = ("train", "probe", "eval")
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"

# (name, pronoun) pairs; the pronoun states the daily change.
PEOPLE = (
    ("Tom", "he"), ("Ann", "she"), ("Sam", "he"), ("Mia", "she"), ("Ben", "he"), ("Lily", "she"),
    ("Max", "he"), ("Zoe", "she"), ("Leo", "he"), ("Ella", "she"), ("Jack", "he"), ("Nora", "she"),
)
OBJECTS = ("apples", "pens", "books", "coins", "cards", "shells", "stamps", "marbles", "cookies", "rocks")
# "{n}" is the daily change. Stories, worked examples and questions all state a problem
# with these same present-tense sentences: the skill the base learns from web stories must
# be the one the probe asks for, so that mid-training recipes differ only in format and strategy.
GAIN_VERBS = ("gets {n} more", "finds {n} more", "buys {n} more", "wins {n} more")
LOSE_VERBS = ("gives away {n}", "loses {n}", "sells {n}", "uses {n}")
FILLER = (
    "The sun was warm that day.", "It rained in the morning.", "The shop on the corner was busy.",
    "Everyone went home after lunch.", "The park was quiet.", "A bird sang outside the window.",
    "The school bus came late.", "They walked to the market together.", "The kitchen smelled of bread.",
)
WORD_OPS = {"+": ("plus", "and {b} more is"), "-": ("minus", "take away {b} is")}
# Each worked example picks its own wording so multi-example documents are not repetitive.
MATHWEB_BRIDGES = (
    "To find how many {obj} {name} has after {days}, we go one day at a time.",
    "We work it out one day at a time.",
    "Write one equation for each day.",
    "Start from {start} and apply the change once per day.",
)
MATHWEB_CONCLUSIONS = ("So after {days} {name} has {result} {obj}.", "The result is {result} {obj}.",
                       "That leaves {name} with {result} {obj}.", "After {days} there are {result} {obj}.")
MATHWEB_INTROS = (
    "Problems like this are solved one day at a time.",
    "Here is a worked example of a change that repeats.",
    "We can follow the numbers day by day.",
    "A good habit is to write one equation for each day.",
)


class ToyWorldConfig(BaseModel):
    """Everything that defines a toy world; two equal configs give identical problems and corpora."""

    model_config = ConfigDict(extra="forbid")
    # part of the config so that it is part of every stage key (see TOY_WORLD_VERSION)
    generator_version: Literal[TOY_WORLD_VERSION] = TOY_WORLD_VERSION
    seed: int = 0
    difficulties: list[int] = Field(default_factory=lambda: [1, 2, 3, 4])
    max_value: int = Field(39, ge=9)  # every intermediate value stays within 0..max_value
    max_operand: int = Field(9, ge=1, le=9)  # operands are single digits
    probe_fraction: float = Field(0.10, gt=0, lt=0.5)  # share of the arithmetic space in the probe split
    eval_fraction: float = Field(0.05, gt=0, lt=0.5)
    web_qa_rate: float = Field(0.15, ge=0, le=1)  # share of web docs that are one-day boxed QA items
    # share of web stories closing with a recap of their start and change: copying a number
    # from earlier in the text, which worked solutions need, is learned in pretraining
    web_recap_rate: float = Field(0.5, ge=0, le=1)
    # " The answer is 23." is ~7 tokens, so 16..32 repeats outrun a 96-token response: the
    # pathology is repetition *to the length limit*, as in zero-RL reports (8..16 repeats
    # stopped inside the limit in half the rollouts, and the failure rule missed 2 of 3 seeds)
    boxed_repeat_min: int = Field(16, ge=1)
    boxed_repeat_max: int = Field(32, ge=1)

    @field_validator("difficulties")
    @classmethod
    def _difficulties_in_range(cls, value: list[int]) -> list[int]:
        if not value or any(not 1 <= d <= 4 for d in value):
            raise ValueError(f"difficulties must be a non-empty list within 1..4, got {value}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _repeat_range(self):
        if self.boxed_repeat_min > self.boxed_repeat_max:
            raise ValueError(f"boxed_repeat_min {self.boxed_repeat_min} > boxed_repeat_max {self.boxed_repeat_max}")
        return self


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str
    difficulty: int
    steps: tuple[tuple[int, str, int, int], ...]  # (left, "+"|"-", change, result), one per day

    @property
    def expression(self) -> str:
        """The arithmetic alone, e.g. "7+5-3"; the split is a hash of this."""
        return expression_of(self.steps)

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(question=self.question)


@dataclass(frozen=True)
class _Scene:
    """The surface of a problem: who, what, and the verb of the daily change."""

    name: str
    pronoun: str
    obj: str
    verb: str


def expression_of(steps) -> str:
    return str(steps[0][0]) + "".join(f"{op}{b}" for _, op, b, _ in steps)


def split_of(expression: str, probe_fraction: float, eval_fraction: float) -> str:
    digest = hashlib.sha256(f"toyworld-split:{expression}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < probe_fraction:
        return "probe"
    if u < probe_fraction + eval_fraction:
        return "eval"
    return "train"


def _rng(*parts: object) -> random.Random:
    # random.Random(str) hashes with sha512, so this is stable across processes and Python runs.
    return random.Random(":".join(map(str, parts)))


def _days(k: int) -> str:
    return "1 day" if k == 1 else f"{k} days"


class ToyWorld:
    def __init__(self, cfg: ToyWorldConfig | None = None):
        self.cfg = cfg or ToyWorldConfig()

    # -- problems ---------------------------------------------------------------------------

    def _sample_steps(self, days: int, rng: random.Random) -> tuple[tuple[int, str, int, int], ...]:
        op = rng.choice("+-")
        change = rng.randint(1, min(self.cfg.max_operand, (self.cfg.max_value - 1) // days))
        total = days * change
        value = rng.randint(1, self.cfg.max_value - total) if op == "+" else rng.randint(total, self.cfg.max_value)
        sign = 1 if op == "+" else -1
        return tuple((value + sign * change * i, op, change, value + sign * change * (i + 1))
                     for i in range(days))

    def _sample_scene(self, steps, rng: random.Random) -> _Scene:
        name, pronoun = rng.choice(PEOPLE)
        verb = rng.choice(GAIN_VERBS if steps[0][1] == "+" else LOSE_VERBS)
        return _Scene(name, pronoun, rng.choice(OBJECTS), verb)

    def _statements(self, steps, scene: _Scene) -> list[str]:
        """The sentences stating the problem: the start, then the daily change."""
        return [f"{scene.name} has {steps[0][0]} {scene.obj}.",
                f"Each day {scene.pronoun} {scene.verb.format(n=steps[0][2])}."]

    def _problem(self, steps, scene: _Scene, split: str) -> Problem:
        question = " ".join(
            self._statements(steps, scene)
            + [f"How many {scene.obj} does {scene.name} have after {_days(len(steps))}?"]
        )
        qhash = hashlib.sha1(question.encode()).hexdigest()[:12]
        return Problem(f"toy-{split}-d{len(steps)}-{qhash}", question, str(steps[-1][3]), len(steps), steps)

    def _split(self, steps) -> str:
        return split_of(expression_of(steps), self.cfg.probe_fraction, self.cfg.eval_fraction)

    def _draw(self, split: str, difficulty: int, rng: random.Random):
        """Rejection-sample (steps, scene) until the arithmetic falls in `split`."""
        for _ in range(100_000):
            steps = self._sample_steps(difficulty, rng)
            if self._split(steps) == split:
                return steps, self._sample_scene(steps, rng)
        raise ValueError(f"toy world: no {split} problems of difficulty {difficulty} (fractions too small?)")

    def _problem_stream(self, split: str, difficulty: int) -> Iterator[Problem]:
        """Endless distinct problems of one split and difficulty, new arithmetic first.

        An expression repeats (with other names and wording) only once 200 draws in a row found
        no new one, so small spaces (1-op problems have ~12 probe expressions) still fill large
        sets while larger spaces give sets of distinct computations.
        """
        rng = _rng(self.cfg.seed, "problems", split, difficulty)
        questions: set[str] = set()
        expressions: set[str] = set()
        misses = 0  # draws in a row that brought a known expression or question
        while misses < 100_000:
            problem = self._problem(*self._draw(split, difficulty, rng), split)
            repeat = problem.expression in expressions
            if problem.question in questions or (repeat and misses < 200):
                misses += 1
                continue
            misses = 0 if not repeat else misses
            questions.add(problem.question)
            expressions.add(problem.expression)
            yield problem
        raise ValueError(f"toy world: no more distinct {split} problems of difficulty {difficulty}")

    def problems(self, split: str, n: int, difficulty: int | None = None) -> list[Problem]:
        """n distinct problems of `split`, at one difficulty or each drawn uniformly from the world's.

        A smaller n gives a prefix of a larger one.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if difficulty is not None and difficulty not in self.cfg.difficulties:
            raise ValueError(f"difficulty {difficulty} is not in the world's difficulties {self.cfg.difficulties}")
        streams = {d: self._problem_stream(split, d) for d in self.cfg.difficulties}
        if difficulty is not None:
            return [next(streams[difficulty]) for _ in range(n)]
        chooser = _rng(self.cfg.seed, "problems", split, "mix")
        return [next(streams[chooser.choice(self.cfg.difficulties)]) for _ in range(n)]

    # -- corpora ------------------------------------------------------------------------------

    def documents(self, kind: str, n_docs: int, seed: int = 0) -> Iterator[dict]:
        """n_docs documents {"id","text","metadata"} of corpus `kind`, built from train problems only."""
        if kind not in CORPUS_KINDS:
            raise ValueError(f"corpus kind must be one of {CORPUS_KINDS}, got {kind!r}")
        make = getattr(self, f"_doc_{kind}")
        rng = _rng(self.cfg.seed, "documents", kind, seed)
        for i in range(n_docs):
            text, difficulty = make(rng)
            yield {"id": f"toy-{kind}-{seed}-{i:07d}", "text": text,
                   "metadata": {"source": "toy", "kind": kind, "difficulty": difficulty}}

    def _train_item(self, rng: random.Random, difficulty: int | None = None):
        d = difficulty if difficulty is not None else rng.choice(self.cfg.difficulties)
        steps, scene = self._draw("train", d, rng)
        return steps, scene, self._problem(steps, scene, "train")

    def _worked(self, steps) -> str:
        """One equation per day: "Day 1 of 2: 7 + 3 = 10. Day 2 of 2: 10 + 3 = 13."

        Only day 1 reads the question (its start, change and day count, each the only number
        after its cue word); every later line copies from the line just before (the result,
        the change, the count) and adds a table fact, and the count on each line makes "stop
        after day k" local too. A tiny model learns all of these cheaply, whereas worked
        solutions that take the i-th number of the question at step i it did not learn
        (toy world v5), nor when to stop without the count (stopping was 81 % of a v6 draft's
        errors). See docs/toy-world.md.
        """
        days = len(steps)
        return " ".join(f"Day {i} of {days}: {a} {op} {b} = {r}." for i, (a, op, b, r) in enumerate(steps, 1))

    def _doc_web(self, rng: random.Random):
        if rng.random() < self.cfg.web_qa_rate:
            _, _, problem = self._train_item(rng, difficulty=1)
            return f"Question: {problem.question}\nAnswer: \\boxed{{{problem.answer}}}", 1
        # One short paragraph: a story (most docs), a few facts in words, and distinct filler
        # sentences, shuffled; no sentence repeats, as in ordinary prose.
        items, difficulty = [], 0
        for _ in range(rng.randint(1, 3)):
            a, op, b, r = self._sample_steps(1, rng)[0]
            word, phrase = WORD_OPS[op]
            # the fact table in words and in the symbolic form worked solutions use
            items.append(rng.choice([f"{a} {word} {b} is {r}.", f"{a} {phrase.format(b=b)} {r}.",
                                     f"{a} {op} {b} = {r}."]))
        items += rng.sample(FILLER, rng.randint(1, 2))
        if rng.random() < 0.8:  # a story ending in its result, stated as questions state it
            steps, scene, _ = self._train_item(rng)
            difficulty = len(steps)
            story = self._statements(steps, scene) + [
                f"After {_days(len(steps))} {scene.name} has {steps[-1][3]} {scene.obj}."]
            if rng.random() < self.cfg.web_recap_rate:
                start, op, change, _ = steps[0]
                story.append(f"{scene.name} started with {start} {scene.obj}, {change} "
                              f"{'more' if op == '+' else 'fewer'} each day.")
            items.append(" ".join(story))
        rng.shuffle(items)
        return " ".join(dict.fromkeys(items)), difficulty

    def _doc_mathweb(self, rng: random.Random):
        paragraphs, difficulty = [rng.choice(MATHWEB_INTROS)], 0
        for _ in range(rng.randint(1, 3)):
            steps, scene, _ = self._train_item(rng)
            difficulty = max(difficulty, len(steps))
            result = steps[-1][3]
            names = {"name": scene.name, "obj": scene.obj, "start": steps[0][0], "result": result,
                     "days": _days(len(steps))}
            paragraphs.append(" ".join([
                rng.choice(("Example:", "Consider this.", "Another one:", "Try this.")),
                # the problem stated as questions state it, then worked through as qa_cot does
                *self._statements(steps, scene),
                rng.choice(MATHWEB_BRIDGES).format(**names),
                self._worked(steps),
                rng.choice(MATHWEB_CONCLUSIONS).format(**names),
            ]))
        return "\n\n".join(paragraphs), difficulty

    def _doc_qa_short(self, rng: random.Random):
        _, _, problem = self._train_item(rng)
        return f"Question: {problem.question}\nAnswer: \\boxed{{{problem.answer}}}", problem.difficulty

    def cot_answer(self, steps) -> str:
        """A qa_cot completion: the worked solution, then the boxed answer."""
        return f"{self._worked(steps)} The answer is \\boxed{{{steps[-1][3]}}}."

    def _doc_qa_cot(self, rng: random.Random):
        steps, scene, problem = self._train_item(rng)
        return f"Question: {problem.question}\nAnswer: {self.cot_answer(steps)}", problem.difficulty

    def _doc_boxed_repeat(self, rng: random.Random):
        _, _, problem = self._train_item(rng)
        repeats = rng.randint(self.cfg.boxed_repeat_min, self.cfg.boxed_repeat_max)
        tail = f" The answer is {problem.answer}." * repeats
        return f"Question: {problem.question}\nAnswer: \\boxed{{{problem.answer}}}.{tail}", problem.difficulty


def write_problems(problems: list[Problem], path: str | Path) -> Path:
    """Write the problem-set JSONL the probe reads: {"id","question","answer","difficulty","data_source"}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in problems:
            record = {"id": p.id, "question": p.question, "answer": p.answer,
                      "difficulty": p.difficulty, "data_source": "toy"}
            f.write(json.dumps(record) + "\n")
    return path

