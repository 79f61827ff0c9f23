"""Problem sets in the field's formats, read into midprobe's one problem format.

midprobe's format, one JSON object per line: {"id", "question", "answer", "data_source",
"difficulty"?} (`answer` is the final answer the reward compares; `difficulty` an integer level).
Read directly, per record:

- midprobe's own: `question` and `answer`;
- GSM8K: `question`, and `answer` holding the worked solution and `#### <final answer>`;
- MATH (and MATH-500): `problem`, `solution`, `answer` when present (else the solution's last
  `\\boxed{}`), `level` as "Level 3" or 3;
- anything else through a field mapping (`ProblemFields`), e.g. {question: prompt, answer: target}.

The pipeline's `problems` stage writes every probe and eval set in midprobe's format with this
reader, so the probe, difficulty control, curation's decontamination and verl's data all read one
format. Nothing here imports torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

GSM8K_MARK = "####"
_LEVEL = re.compile(r"^(?:level\s*)?(\d+)$", re.IGNORECASE)


class ProblemFields(BaseModel):
    """Which field of a record holds what, for formats the reader does not know by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    question: str | None = None
    answer: str | None = None  # a final answer, or a GSM8K-style "... #### answer"
    solution: str | None = None  # a worked solution whose last \boxed{} is the answer
    difficulty: str | None = None
    data_source: str | None = None


class ProblemFormatError(ValueError):
    """A file the reader cannot turn into problems; the message names the file and line."""


def read_problem_set(path: str | Path, fields: ProblemFields | None = None) -> list[dict]:
    """Every problem of a JSONL file in midprobe's format (see the module docstring)."""
    path, fields = Path(path), fields or ProblemFields()
    problems, lines_of_ids = [], {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ProblemFormatError(f"{path}: line {line_no} is not JSON") from None
            if not isinstance(record, dict):
                raise ProblemFormatError(f"{path}: line {line_no} is not a JSON object")
            try:
                problem = _problem(record, fields, f"{path.stem}-{line_no}", path.stem)
            except ProblemFormatError as exc:
                raise ProblemFormatError(f"{path}: line {line_no} {exc}") from None
            if problem["id"] in lines_of_ids:
                raise ProblemFormatError(f"{path}: line {line_no} repeats id {problem['id']!r} of line "
                                         f"{lines_of_ids[problem['id']]}")
            lines_of_ids[problem["id"]] = line_no
            problems.append(problem)
    return problems


def has_levels(problems: list[dict]) -> bool:
    return any(p.get("difficulty") is not None for p in problems)


def _problem(record: dict, fields: ProblemFields, default_id: str, default_source: str) -> dict:
    def field(name: str, *known: str):
        mapped = getattr(fields, name)
        for key in ([mapped] if mapped else known):
            if record.get(key) is not None:
                return record[key]
        if mapped:
            raise ProblemFormatError(f"has no {mapped!r} (mapped to {name})")
        return None

    question = field("question", "question", "problem")
    if question is None:
        raise ProblemFormatError(f"has no 'question' (or MATH's 'problem', or a field mapping; "
                                 f"has: {', '.join(sorted(record)) or 'no fields'})")
    answer = field("answer", "answer")
    solution = field("solution", "solution")
    if isinstance(answer, str) and GSM8K_MARK in answer:  # GSM8K: worked solution, then "#### 72"
        solution, answer = split_gsm8k(answer)
    if answer is None and solution is not None:
        answer = last_boxed(str(solution))
    if answer is None or str(answer).strip() == "":
        raise ProblemFormatError("has no 'answer' (a final answer, or GSM8K's '... #### answer', or a "
                                 "'solution' with a \\boxed{} answer)")
    problem_id = field("id", "id", "unique_id", "idx")
    problem = {
        "id": default_id if problem_id is None else str(problem_id),
        "question": str(question),
        "answer": str(answer).strip(),
        "data_source": str(field("data_source", "data_source") or default_source),
    }
    level = field("difficulty", "difficulty", "level")
    if level is not None:
        problem["difficulty"] = _level(level)
    if solution is not None:
        problem["solution"] = str(solution).strip()
    return problem


def split_gsm8k(answer: str) -> tuple[str, str]:
    """GSM8K's answer field as (worked solution, final answer without thousands separators)."""
    if GSM8K_MARK not in answer:
        raise ValueError(f"no '{GSM8K_MARK} <final answer>' line")
    solution, final = answer.rsplit(GSM8K_MARK, 1)
    return solution, final.strip().replace(",", "")


def _level(value) -> int:
    match = _LEVEL.match(str(value).strip())
    if match is None:
        raise ProblemFormatError(f"difficulty {value!r} is not a level (an integer or 'Level N')")
    return int(match.group(1))


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} in `text` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth < 0:
            return text[begin:i]
    return None


def write_problem_set(problems: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return path
