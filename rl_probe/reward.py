"""Rule-based math reward: final-answer correctness, format and repetition penalties.

Model output is only ever treated as text: numbers are compared with
`fractions.Fraction` on literal syntax (never evaluated), and everything the
fast path cannot decide goes to math-verify in a killable child process
(`rl_probe.verify_worker`). Every step is length-capped, so a pathological
response (100k chars, deeply nested LaTeX, `9^9^9^9`) is scored in bounded time.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import selectors
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import get_args

import numpy as np

from rl_probe.spec import RewardVariant

# Bounds on the work done per response.
MAX_BOX_CHARS = 1000  # a boxed answer longer than this is treated as unterminated
MAX_ANSWER_CHARS = 256  # longer answers are not sent to math-verify (they are wrong)
MAX_REPETITION_CHARS = 32768  # repetition is looked for in the last this-many chars
MAX_REPETITION_PERIOD = 256  # longest repeated span considered
# Per math-verify call: the worker may spend VERIFY_CPU_S of CPU time, and is
# killed after VERIFY_WALL_S whatever happens. The verdict hangs on CPU time,
# not wall time, so that a busy machine does not turn right answers into
# wrong ones (which would make rewards, and runs, depend on machine load).
VERIFY_CPU_S = 0.5
VERIFY_WALL_S = 10.0
WORKER_START_TIMEOUT_S = 60.0
_POLL_S = 0.02
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

REWARD_VARIANTS = get_args(RewardVariant)
# SimpleRL-Zoo's reflection keywords.
REFLECTION_RE = re.compile(r"\b(recheck|rethink|try again|wait|alternatively|retry|however)\b", re.IGNORECASE)
_GSM8K_RE = re.compile(r"####\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")
_BOXED = "\\boxed"
_NUMBER_RE = re.compile(r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
_FRAC_RE = re.compile(r"(-?)\\[dt]?frac\{(-?[0-9]+)\}\{(-?[0-9]+)\}")
_SLASH_RE = re.compile(r"(-?[0-9]+)/([0-9]+)")
_LATEX_NOISE_RE = re.compile(r"\\[!,;: ]|\\left|\\right|\s|\$")


@dataclass(frozen=True)
class RewardResult:
    score: float
    acc: bool
    format_ok: bool
    pred: str | None
    repeated: bool


def score(response: str, ground_truth: str, variant: str = "default") -> RewardResult:
    """Score one response against its reference answer.

    Format is OK when the response has exactly one `\\boxed{}`, or no box and a
    GSM8K-style `#### n`. Several boxes are a format error (OctoThinker's
    wformat: "answer, then loop" Llama outputs box again and again).
    `default`: +1 correct, 0 wrong, -1 bad format. `wrong-half`: wrong is -0.5.
    `repetition`: like default, and -1 when a span of >= 5 chars repeats 5 times.
    """
    if variant not in REWARD_VARIANTS:
        raise ValueError(f"unknown reward variant {variant!r}; known: {REWARD_VARIANTS}")
    n_boxes = response.count(_BOXED)
    pred = last_boxed(response) if n_boxes else None
    if pred is None and n_boxes == 0:
        gsm = _GSM8K_RE.findall(response[-MAX_BOX_CHARS:])
        pred = gsm[-1] if gsm else None
    format_ok = pred is not None and n_boxes <= 1
    acc = pred is not None and answers_equal(pred, ground_truth)
    repeated = has_repetition(response)
    if not format_ok or (variant == "repetition" and repeated):
        reward = -1.0
    elif acc:
        reward = 1.0
    else:
        reward = -0.5 if variant == "wrong-half" else 0.0
    return RewardResult(score=reward, acc=acc, format_ok=format_ok, pred=pred, repeated=repeated)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`, or None if it is missing or unterminated."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    i = start + len(_BOXED)
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, min(len(text), i + MAX_BOX_CHARS)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def boxed_first(response: str) -> bool:
    """The response opens with its boxed answer (no reasoning before it)."""
    return response.lstrip().lstrip("$ ").startswith(_BOXED)


def has_reflection(response: str) -> bool:
    return REFLECTION_RE.search(response[-MAX_REPETITION_CHARS:]) is not None


def has_repetition(text: str, min_period: int = 5, min_repeats: int = 5) -> bool:
    """True when some span of >= min_period chars occurs min_repeats times in a row.

    Same matches as OctoThinker's regex `(.{5,}?)\\1{4,}` with re.DOTALL for
    spans up to MAX_REPETITION_PERIOD chars, but linear per period instead of
    the regex's cubic backtracking: a span of period p repeated r times is a
    run of (r-1)*p positions where text[i] == text[i+p].
    """
    tail = text[-MAX_REPETITION_CHARS:]
    codes = np.frombuffer(tail.encode("utf-32-le"), dtype=np.uint32)
    n = len(codes)
    for period in range(min_period, min(MAX_REPETITION_PERIOD, n // min_repeats) + 1):
        need = (min_repeats - 1) * period
        same = np.concatenate(([0], (codes[:-period] == codes[period:]).view(np.int8), [0]))
        edges = np.flatnonzero(np.diff(same))
        if len(edges) and (edges[1::2] - edges[0::2]).max() >= need:
            return True
    return False


def answers_equal(pred: str, ground_truth: str) -> bool:
    """Exact or numeric equality first; math-verify (bounded, out of process) otherwise."""
    a, b = _normalize(pred), _normalize(ground_truth)
    if a == b:
        return True
    fa, fb = _as_fraction(a), _as_fraction(b)
    if fa is not None and fb is not None:
        return fa == fb
    if len(pred) > MAX_ANSWER_CHARS or len(ground_truth) > MAX_ANSWER_CHARS:
        return False
    return _verifier.equal(pred, ground_truth)


def _normalize(answer: str) -> str:
    answer = _LATEX_NOISE_RE.sub("", answer[:MAX_ANSWER_CHARS + 1])
    if answer.startswith("\\text{") and answer.endswith("}"):
        answer = answer[6:-1]
    return answer.rstrip(".")


def _as_fraction(answer: str) -> Fraction | None:
    """A number written literally (int, decimal, 1,000, a/b, \\frac{a}{b}); never evaluates."""
    if _NUMBER_RE.fullmatch(answer):
        return Fraction(answer.replace(",", ""))
    if m := _FRAC_RE.fullmatch(answer):
        sign, num, den = m.groups()
        return None if int(den) == 0 else Fraction(int(num), int(den)) * (-1 if sign else 1)
    if m := _SLASH_RE.fullmatch(answer):
        num, den = m.groups()
        return None if int(den) == 0 else Fraction(int(num), int(den))
    return None


class _VerifyWorker:
    """A long-lived math-verify child process, killed and replaced on a timeout.

    A spare process is kept started, so that replacing a killed worker costs
    no start-up time inside the next call's time limit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: subprocess.Popen | None = None
        self._spare: subprocess.Popen | None = None
        atexit.register(self.close)

    def equal(self, pred: str, ground_truth: str) -> bool:
        with self._lock:
            proc = self._ensure_active()
            cpu_before = _cpu_seconds(proc.pid)
            proc.stdin.write(json.dumps({"pred": pred, "gt": ground_truth}) + "\n")
            proc.stdin.flush()
            line = None
            deadline = time.monotonic() + VERIFY_WALL_S
            while line is None and time.monotonic() < deadline:
                line = _readline(proc, _POLL_S)
                if line is None and _cpu_seconds(proc.pid) - cpu_before > VERIFY_CPU_S:
                    break
            if line is None:  # stuck in parsing or sympy: kill it, the answer counts as wrong
                _kill(proc)
                self._active = None
                return False
            return json.loads(line)["equal"]

    def warm_up(self) -> None:
        with self._lock:
            self._ensure_active()

    def _ensure_active(self) -> subprocess.Popen:
        if self._active is None or self._active.poll() is not None:
            proc = self._spare if self._spare is not None and self._spare.poll() is None else _start_worker()
            self._spare = None
            if _readline(proc, WORKER_START_TIMEOUT_S) != "ready":
                _kill(proc)
                raise RuntimeError("math-verify worker did not start (is math-verify installed?)")
            self._active = proc
        if self._spare is None:
            self._spare = _start_worker()
        return self._active

    def close(self) -> None:
        for proc in (self._active, self._spare):
            if proc is not None:
                _kill(proc)
        self._active = self._spare = None


def _start_worker() -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rl_probe.verify_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )


def _readline(proc: subprocess.Popen, timeout_s: float) -> str | None:
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return None
    line = proc.stdout.readline()
    return line.strip() if line else None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux); 0 elsewhere, leaving the wall-clock limit."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


_verifier = _VerifyWorker()


def warm_up_verifier() -> None:
    """Start the math-verify worker now, so that the first scored call is not slowed by its start-up."""
    _verifier.warm_up()
