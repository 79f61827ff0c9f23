"""Rule-based math reward: final-answer correctness, format and repetition penalties.

Model output is only ever treated as text: numbers are compared with
`fractions.Fraction` on literal syntax (never evaluated), and everything the
fast path cannot decide goes to math-verify in a killable child process
(`rl_probe.verify_worker`). Every step is length-capped, and a call's
math-verify work must finish by a wall-clock deadline counted from the call
(`SCORE_WALL_S`), so a pathological response (100k chars, deeply nested LaTeX,
`9^9^9^9`) is scored in bounded wall time even on a busy machine.
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
from typing import get_args

import numpy as np

from rl_probe.spec import RewardVariant

# Bounds on the work done per response.
MAX_BOX_CHARS = 1000  # a boxed answer longer than this is treated as unterminated
MAX_ANSWER_CHARS = 256  # longer answers are not sent to math-verify (they are wrong)
MAX_REPETITION_CHARS = 32768  # repetition is looked for in the last this-many chars
MAX_REPETITION_PERIOD = 256  # longest repeated span considered
# Wall-clock budget of one score() call, counted from the call: math-verify gets what is left
# of it and is killed (its verdict: not equal) when it runs over. A wall-clock bound means a
# very slow machine can turn an answer that only math-verify can decide into a wrong one;
# the normalisation below decides the common forms (numbers, fractions, prefixes, units,
# percent, intervals) without math-verify, which keeps that rare. Gold answers of MATH train
# solutions are all decided within it under load (docs/results/2026-11-27-reward.md).
SCORE_WALL_S = 1.0
# Held-out evaluation's budget per call: a score that only depends on the model, never on how
# loaded the machine is. Answers are at most MAX_ANSWER_CHARS long before math-verify sees them,
# so this only waits this long on a stuck verification, never on a well-formed answer.
EVAL_SCORE_WALL_S = 30.0
# of the budget, kept for the rest of score() and for being scheduled late on a loaded machine
_VERIFY_MARGIN_S = 0.3
WORKER_START_TIMEOUT_S = 60.0
SPARE_WORKERS = 2  # started ahead, so that a killed worker's replacement is already loaded

# single-box: OctoThinker's format rule, several \boxed{} in one response are a format error.
REWARD_VARIANTS = get_args(RewardVariant)
# SimpleRL-Zoo's reflection keywords.
REFLECTION_RE = re.compile(r"\b(recheck|rethink|try again|wait|alternatively|retry|however)\b", re.IGNORECASE)
_GSM8K_RE = re.compile(r"####\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")
_BOXED = "\\boxed"
# `\boxed{}` with nothing in it states no answer: the boxed templates' own instruction ends in one,
# so counting it would reward echoing the prompt (as a format, or as a second box under single-box).
_EMPTY_BOX_RE = re.compile(r"\\boxed\s*\{\s*\}")
_NUMBER_RE = re.compile(r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|-?\.[0-9]+")
_FRAC_RE = re.compile(r"(-?)\\[dt]?frac\{(-?[0-9]+)\}\{(-?[0-9]+)\}")
_SLASH_RE = re.compile(r"(-?[0-9]+)/([0-9]+)")
_LATEX_NOISE_RE = re.compile(r"\\[!,;: ]|\\left|\\right|\\displaystyle|\s|\$")
# `\text{ cm}`, `\mbox{...}`, `\textbf{...}`: the content is the answer (or a unit, dropped below)
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|mathbf|operatorname)\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"(?<=\d)(?:\{,\}|,\\!)(?=\d{3})")
# "x = 58,500", "k=\frac{-33}{2}", "x \in [-2,7]", "f(x) = ...": a variable and = or \in before the answer
_VARIABLE_PREFIX_RE = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*(?:=|\\in\b)\s*(?=\S)")
_POWER_TOWER_RE = re.compile(r"\^\{[^{}]*\^|\^[0-9A-Za-z]+\^")  # an exponent with an exponent in it
_BASE_SUBSCRIPT_RE = re.compile(r"[0-9A-Za-z]_\{?[0-9]")  # a number in base b: 43_5, 1011_{2}
_PERCENT_RE = re.compile(r"\s*\\?%\s*$")
_DEGREES_RE = re.compile(r"\^\s*\{?\\circ\}?|\\circ|°")
_APPROX_RE = re.compile(r"\\approx\b|≈")
_DOLLAR_RE = re.compile(r"\\\$|^\$")
# a unit word (2+ letters) after a number and a space: "45 seconds", "2 euros", "200 \text{ cm}^2"; not "2i"
_UNIT_SUFFIX_RE = re.compile(r"^(-?[0-9][0-9,.]*(?:/[0-9]+)?)\s+([A-Za-z]{2,}[A-Za-z. ]*(?:\^\{?[23]\}?)?)$")
# "square cm", "sq. units", "cubic inches", "cm^2": a power of a unit
_UNIT_POWER_RE = re.compile(r"^(?:(square|sq|cubic|cu)\b\.?)?\s*([a-z. ]+?)\s*(?:\^\{?([23])\}?)?$")
# Measurement units (singular, and plural/abbreviated spellings): two answers with different ones are
# different answers ("2400 cm^3" is not "2400 cm^2"). Other words after a number ("9 ways", "21 dogs")
# count things rather than measure them and are dropped without comparing.
_UNITS = {
    unit: name
    for name, spellings in {
        "mm": ("mm", "millimeter", "millimetre"), "cm": ("cm", "centimeter", "centimetre"),
        "m": ("m", "meter", "metre"), "km": ("km", "kilometer", "kilometre"), "in": ("in", "inch"),
        "ft": ("ft", "foot", "feet"), "yd": ("yd", "yard"), "mi": ("mi", "mile"),
        "s": ("s", "sec", "second"), "min": ("min", "minute"), "h": ("h", "hr", "hour"), "day": ("day",),
        "week": ("week",), "month": ("month",), "year": ("year", "yr"),
        "g": ("g", "gram"), "kg": ("kg", "kilogram"), "lb": ("lb", "pound"), "oz": ("oz", "ounce"),
        "ton": ("ton",), "l": ("l", "liter", "litre"), "ml": ("ml", "milliliter", "millilitre"),
        "gal": ("gal", "gallon"), "qt": ("qt", "quart"), "pt": ("pt", "pint"), "cup": ("cup",),
        "acre": ("acre",), "mph": ("mph",), "dollar": ("dollar",), "cent": ("cent",), "euro": ("euro",),
        "degree": ("degree",), "radian": ("radian", "rad"),
    }.items()
    for unit in spellings
}


@dataclass(frozen=True)
class RewardResult:
    score: float
    acc: bool
    format_ok: bool
    pred: str | None
    repeated: bool


def score(response: str, ground_truth: str, variant: str = "default", wall_s: float = SCORE_WALL_S) -> RewardResult:
    """Score one response against its reference answer, within `wall_s` of wall time.

    The answer is the last non-empty `\\boxed{}` (reference solutions box an
    intermediate result and then the answer; an empty box states nothing), or
    with no such box a GSM8K-style `#### n`; the format is OK when there is one. `default`: +1 correct, 0 wrong, -1 bad
    format. `wrong-half`: wrong is -0.5. `repetition`: like default, and -1 when
    a span of >= 5 chars repeats 5 times. `single-box`: like default, and
    several boxes are a format error (OctoThinker's rule: "answer, then loop"
    Llama outputs box again and again). A longer `wall_s` than the probe's
    SCORE_WALL_S lets math-verify decide on a machine too loaded for the bound
    (offline scoring, correctness tests).
    """
    deadline = time.monotonic() + wall_s - _VERIFY_MARGIN_S
    if variant not in REWARD_VARIANTS:
        raise ValueError(f"unknown reward variant {variant!r}; known: {REWARD_VARIANTS}")
    answered = _EMPTY_BOX_RE.sub("", response)  # only boxes with something in them count
    n_boxes = answered.count(_BOXED)
    pred = last_boxed(answered) if n_boxes else None
    if pred is None and n_boxes == 0:
        gsm = _GSM8K_RE.findall(answered[-MAX_BOX_CHARS:])
        pred = gsm[-1] if gsm else None
    format_ok = pred is not None and (n_boxes <= 1 or variant != "single-box")
    repeated = has_repetition(response)  # before the deadline-bounded comparison: its time is inside the deadline
    acc = pred is not None and answers_equal(pred, ground_truth, deadline)
    if not format_ok or (variant == "repetition" and repeated):
        reward = -1.0
    elif acc:
        reward = 1.0
    else:
        reward = -0.5 if variant == "wrong-half" else 0.0
    return RewardResult(score=reward, acc=acc, format_ok=format_ok, pred=pred, repeated=repeated)


def score_held_out(response: str, ground_truth: str, variant: str = "default") -> RewardResult:
    """score() for evaluation (held-out accuracy, the pass@k profile): within EVAL_SCORE_WALL_S,
    so that how loaded the machine is never decides whether a well-formed answer is right. The
    training reward keeps SCORE_WALL_S, which bounds a step's time."""
    return score(response, ground_truth, variant, wall_s=EVAL_SCORE_WALL_S)


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
    """The response opens with its boxed answer (no reasoning before it); an empty box is none."""
    return _EMPTY_BOX_RE.sub("", response).lstrip().lstrip("$ ").startswith(_BOXED)


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


def answers_equal(pred: str, ground_truth: str, deadline: float | None = None) -> bool:
    """Exact or numeric equality after normalisation first; math-verify (out of process, done by
    `deadline`, a time.monotonic() value; default SCORE_WALL_S from now) otherwise.

    An answer `A \\approx B` states a value and its approximation (math-verify reads only A):
    every part that both answers state must be equal, and with none in common, the first part
    each states."""
    deadline = time.monotonic() + SCORE_WALL_S - _VERIFY_MARGIN_S if deadline is None else deadline
    if len(pred) > MAX_ANSWER_CHARS or len(ground_truth) > MAX_ANSWER_CHARS:
        return _compact(pred) == _compact(ground_truth)
    p, g = _approx_parts(pred), _approx_parts(ground_truth)
    pairs = [(a, b) for a, b in zip(p, g, strict=True) if a and b]
    if not pairs:
        pairs = [(next((a for a in p if a), ""), next((b for b in g if b), ""))]
    return all(_values_equal(a, b, deadline) for a, b in pairs)


def _approx_parts(answer: str) -> tuple[str, str]:
    """(value, approximation) of `A \\approx B`, either may be empty; (answer, "") without `\\approx`."""
    parts = _APPROX_RE.split(answer, maxsplit=1)
    return (parts[0].strip(), parts[1].strip()) if len(parts) == 2 else (answer, "")


def _values_equal(pred: str, ground_truth: str, deadline: float) -> bool:
    (a, unit_a), (b, unit_b) = _normalize(pred), _normalize(ground_truth)
    if unit_a and unit_b and unit_a != unit_b:
        return False
    ca, cb = _compact(a), _compact(b)
    if ca == cb:
        return True
    fa, fb = _as_fraction(ca), _as_fraction(cb)
    if fa is not None and fb is not None:
        return fa == fb
    if _BASE_SUBSCRIPT_RE.search(ca) or _BASE_SUBSCRIPT_RE.search(cb):
        return False  # math-verify drops the base: it takes 43_6 for 43_5
    if _POWER_TOWER_RE.search(ca) or _POWER_TOWER_RE.search(cb):
        return False  # sympy evaluates 9^{9^{9}} exactly, past any deadline (no MATH-train answer has one)
    return _verifier.equal(a, b, deadline)


def normalize_answer(answer: str) -> str:
    """The answer without what does not change its value: `\\text{}` wrappers, a variable prefix
    (`x = `, `x \\in `), thousands separators (`10,\\!080`, `18{,}360`), a percent sign,
    degrees, a dollar sign, a unit after a number; spacing is kept for math-verify."""
    return _normalize(answer)[0]


def _normalize(answer: str) -> tuple[str, tuple[str, int] | None]:
    """normalize_answer's value, and the measurement unit it dropped as (unit, power), if any."""
    answer = answer[:MAX_ANSWER_CHARS].strip()
    for _ in range(3):  # nested wrappers, innermost first
        answer = _TEXT_WRAPPER_RE.sub(r"\1", answer)
    answer = _THOUSANDS_RE.sub(",", answer)
    answer = _VARIABLE_PREFIX_RE.sub("", answer)
    answer = _DEGREES_RE.sub("", _DOLLAR_RE.sub("", answer))
    answer = _PERCENT_RE.sub("", answer).strip().rstrip(".").strip()
    if m := _UNIT_SUFFIX_RE.match(answer):
        return m.group(1), _measurement_unit(m.group(2))
    return answer, None


def _measurement_unit(words: str) -> tuple[str, int] | None:
    """("cm", 2) for "cm^2", "square centimeters", "sq cm"; None for a word that is not a unit."""
    m = _UNIT_POWER_RE.match(words.lower().strip())
    if m is None:
        return None
    prefix, word, power = m.groups()
    word = word.replace(".", "").strip()
    # as written, or a plural: "miles", "inches"
    singular = next((w for w in (word, word[:-1], word[:-2]) if w in _UNITS and (w == word or word.endswith("s"))), None)
    if singular is None:
        return None
    return _UNITS[singular], int(power) if power else {"square": 2, "sq": 2, "cubic": 3, "cu": 3}.get(prefix, 1)


def _compact(answer: str) -> str:
    return _LATEX_NOISE_RE.sub("", answer[: MAX_ANSWER_CHARS + 1]).rstrip(".")


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
    """A long-lived math-verify child process, killed and replaced when it runs past a deadline.

    SPARE_WORKERS processes are kept started ahead by one long-lived background thread, which
    also reaps killed ones: nothing on a call's path forks, loads math-verify, waits for a dying
    process or starts a thread (Thread.start() waits until the new thread runs: up to seconds
    for a core on a loaded machine, measured). Only the very first call, when nobody warmed up,
    waits for a worker to load.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one call at a time talks to the active worker
        self._pool_lock = threading.Lock()  # spares and killed workers, shared with the refill thread
        self._active: subprocess.Popen | None = None
        self._spares: list[subprocess.Popen] = []
        self._killed: list[subprocess.Popen] = []
        self._starting = 0  # spares being started by the refill thread
        self._refill_wanted = threading.Event()
        self._refiller_pid: int | None = None  # the process whose refill thread runs (a fork has none)
        atexit.register(self.close)

    def equal(self, pred: str, ground_truth: str, deadline: float) -> bool:
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        try:
            if self._active is None and not self._spares:
                self._start_first()  # a caller that did not warm up pays the one start-up here
                deadline = max(deadline, time.monotonic() + SCORE_WALL_S - _VERIFY_MARGIN_S)
            proc = self._ready_worker(deadline)
            if proc is None:  # no loaded worker in time: not verified
                return False
            proc.stdin.write(json.dumps({"pred": pred, "gt": ground_truth}) + "\n")
            proc.stdin.flush()
            line = _readline(proc, max(0.0, deadline - time.monotonic()))
            if line is None:  # stuck in parsing or sympy: kill it, the answer counts as wrong
                proc.kill()
                self._active = None
                with self._pool_lock:
                    self._killed.append(proc)
                self._refill()
                return False
            return json.loads(line)["equal"]
        finally:
            self._lock.release()

    def warm_up(self) -> None:
        """Block until a loaded worker is active (after a kill: until a spare has loaded)."""
        with self._lock:
            if self._active is None and not self._spares and not self._starting:
                self._start_first()
                return
            deadline = time.monotonic() + WORKER_START_TIMEOUT_S
            while self._ready_worker(deadline) is None:  # None also while the refill thread starts one
                if time.monotonic() > deadline:
                    raise RuntimeError("math-verify worker did not start (is math-verify installed?)")
                time.sleep(0.05)

    def _start_first(self) -> None:
        proc = _start_worker()
        if _readline(proc, WORKER_START_TIMEOUT_S) != "ready":
            _kill(proc)
            raise RuntimeError("math-verify worker did not start (is math-verify installed?)")
        self._active = proc
        self._refill()

    def _ready_worker(self, deadline: float) -> subprocess.Popen | None:
        """The active worker, or the first spare once it has printed `ready` (by the deadline)."""
        if self._active is not None and self._active.poll() is None:
            return self._active
        self._active = None
        with self._pool_lock:
            proc = self._spares.pop(0) if self._spares else None
        self._refill()
        if proc is None:
            return None
        if _readline(proc, max(0.0, deadline - time.monotonic())) != "ready":
            with self._pool_lock:
                self._spares.insert(0, proc)  # still loading: it stays first in line
            return None
        self._active = proc
        return proc

    def _refill(self) -> None:
        """Ask the refill thread to top up the spares; never waits for it. The thread is started by
        the first worker's start (warm-up), or once in a forked process, which has no threads."""
        if self._refiller_pid != os.getpid():
            self._refiller_pid = os.getpid()
            threading.Thread(target=self._refill_loop, daemon=True).start()
        self._refill_wanted.set()

    def _refill_loop(self) -> None:
        while True:
            self._refill_wanted.wait()
            self._refill_wanted.clear()
            self._refill_now()

    def _refill_now(self) -> None:
        # Starting a process waits for its exec, seconds on a loaded machine: never under the lock.
        with self._pool_lock:
            killed, self._killed = self._killed, []
            self._spares = [p for p in self._spares if p.poll() is None]
            missing = SPARE_WORKERS - len(self._spares) - self._starting
            self._starting += max(0, missing)
        for proc in killed:
            proc.wait()
        for _ in range(missing):
            proc = _start_worker()
            with self._pool_lock:
                self._spares.append(proc)
                self._starting -= 1

    def close(self) -> None:
        with self._pool_lock:
            for proc in [self._active, *self._spares, *self._killed]:
                if proc is not None:
                    _kill(proc)
            self._active, self._spares, self._killed = None, [], []


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


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


_verifier = _VerifyWorker()


def warm_up_verifier() -> None:
    """Start the math-verify worker now (or wait for a replacement of a killed one), so that no
    scored call waits for a worker to load."""
    _verifier.warm_up()
