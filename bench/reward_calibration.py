"""The reward measured on real train-split solutions (data/README.md): each reference solution
must score as correct against its own answer, and never against a wrong one."""

from __future__ import annotations

import random
import re
import string
import time
from pathlib import Path

from data_recipes.calibration import gsm8k_train, math_train
from rl_probe.reward import SCORE_WALL_S, last_boxed, normalize_answer, score

_GSM8K_FINAL = re.compile(r"####\s*(.+)\s*$")
_LAST_DIGIT = re.compile(r"\d(?=\D*$)")


def gsm8k_cases(every: int = 1) -> list[tuple[str, str]]:
    """(solution with its `#### n` rendered as `\\boxed{n}`, gold n without thousands separators)."""
    cases = []
    for record in gsm8k_train()[::every]:
        answer = _GSM8K_FINAL.search(record["answer"]).group(1).strip()
        solution = _GSM8K_FINAL.sub(f"The answer is $\\\\boxed{{{answer}}}$.", record["answer"])
        cases.append((solution, answer.replace(",", "")))
    return cases


def math_cases(every: int = 1) -> list[tuple[str, str]]:
    """(MATH solution, its answer: the last boxed expression, as MATH-500-style sets define it);
    the few solutions without one (`\\fbox`, no box) are left out."""
    cases = [(r["solution"], last_boxed(r["solution"])) for r in math_train()[::every]]
    return [(solution, answer) for solution, answer in cases if answer is not None]


def wrong_answer(answer: str) -> str | None:
    """The answer with its last digit changed (3 -> 4, 9 -> 0): a different value; None without digits."""
    m = _LAST_DIGIT.search(answer)
    return None if m is None else answer[: m.start()] + str((int(m.group()) + 1) % 10) + answer[m.end():]


def measure(cases: list[tuple[str, str]], wall_s: float = SCORE_WALL_S) -> dict:
    """Accuracy against the gold answer and against its normalised form, wrong answers accepted,
    and the slowest call (wall seconds); each call scored within `wall_s`."""
    right = right_normalized = wrong_total = wrong_accepted = 0
    slowest, failures = 0.0, []
    for solution, gold in cases:
        started = time.monotonic()
        ok = score(solution, gold, wall_s=wall_s).score == 1.0
        slowest = max(slowest, time.monotonic() - started)
        right += ok
        right_normalized += score(solution, normalize_answer(gold), wall_s=wall_s).score == 1.0
        if not ok:
            failures.append(gold)
        if (wrong := wrong_answer(gold)) is not None:
            wrong_total += 1
            if score(solution, wrong, wall_s=wall_s).acc:
                wrong_accepted += 1
                failures.append(f"accepted wrong {wrong!r} for {gold!r}")
    return {"solutions": len(cases), "accuracy": right / len(cases),
            "accuracy_normalized_gold": right_normalized / len(cases),
            "wrong_answers": wrong_total, "wrong_accepted": wrong_accepted,
            "slowest_call_s": round(slowest, 3), "failures": failures[:20]}


def adversarial_outputs(n: int, seed: int = 0) -> list[str]:
    """n hostile responses: deep `\\frac` and brace nesting, power towers, huge numbers and
    factorials, 100k-character texts, unterminated and repeated boxes, code, random unicode."""
    rng = random.Random(seed)

    def make() -> str:
        k = rng.randint(2, 3000)
        return rng.choice([
            lambda: "\\boxed{" + "\\frac{1}{" * k + "2" + "}" * k + "}",
            lambda: "\\boxed{" + "{" * k + "}" * k + "}",
            lambda: "\\boxed{" + "^".join(["9"] * rng.randint(3, 12)) + "}",
            lambda: "\\boxed{" + "^{".join(["9"] * rng.randint(3, 12)) + "}" * rng.randint(2, 11) + "}",
            lambda: f"\\boxed{{{rng.randint(10, 99)}^{{{rng.randint(10, 99)}^{{{rng.randint(10, 99)}}}}}!}}",
            lambda: "\\boxed{" + str(rng.randint(1, 9)) * rng.randint(200, 256) + "}",
            lambda: "\\boxed{" + "\\sqrt{" * min(k, 120) + "2" + "}" * min(k, 120) + "}",
            lambda: "x" * 100_000 + "\\boxed{" + str(k) + "}",
            lambda: "\\boxed{" * rng.randint(1, 20_000),
            lambda: "".join(rng.choice(string.printable + "∑∫√π𝔸😀{}\\^") for _ in range(100_000)),
            lambda: "\\boxed{" + rng.choice(["__import__('os').system('true')", "\\int_0^\\infty e^{x^x} dx",
                                            "\\prod_{n=1}^{10^{10}} n", "\\lim_{x\\to0} x^{x^{x^{x}}}"]) + "}",
            lambda: ("The answer is \\boxed{7}. " * rng.randint(100, 4000)),
        ])()

    return [make() for _ in range(n)]


def measure_wall_bound(responses: list[str], ground_truth: str = "5") -> dict:
    """Wall seconds per score() call (max, 99th percentile), calls over SCORE_WALL_S, exceptions,
    and the longest time a call was blocked: its wall time less its CPU time and its wait for a
    core (Linux schedstat), i.e. waiting on the worker or on a lock. That stays within the deadline
    however loaded the machine is; what a loaded machine adds on top is the wait for a core."""
    walls, blocked, raised = [], [], []
    for response in responses:
        started, before = time.monotonic(), cpu_and_run_queue_s()
        try:
            score(response, ground_truth)
        except Exception as exc:  # counted, not raised: the measurement is how many there are
            raised.append(f"{type(exc).__name__}: {exc}")
        walls.append(time.monotonic() - started)
        if before is not None:
            blocked.append(walls[-1] - (cpu_and_run_queue_s() - before))
    walls.sort()
    return {"calls": len(walls), "max_wall_s": round(walls[-1], 3),
            "p99_wall_s": round(walls[int(0.99 * (len(walls) - 1))], 3),
            "over_budget": sum(w > SCORE_WALL_S for w in walls),
            "max_blocked_s": round(max(blocked), 3) if blocked else None,
            "raised": len(raised), "errors": raised[:5]}


def cpu_and_run_queue_s() -> float | None:
    """This thread's CPU time plus its time waiting for a core so far (None off Linux)."""
    try:
        cpu_ns, run_queue_ns, _ = Path("/proc/thread-self/schedstat").read_text().split()
    except OSError:
        return None
    return (int(cpu_ns) + int(run_queue_ns)) / 1e9
