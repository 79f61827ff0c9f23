"""math-verify in a child process, so that the parent can kill it on a timeout.

math-verify's own timeout is `signal.alarm`: main thread only, whole seconds,
and unable to interrupt C-level work such as sympy evaluating `9**(9**9)`.
A separate process is the only bound that always holds. It is started with
`python -m` (not multiprocessing) so callers need no `__main__` guard.

Protocol: one JSON object per line on stdin `{"pred": str, "gt": str}`,
one line on stdout `{"equal": bool}`; the first stdout line is `ready`, printed
once math-verify is loaded and has compared one pair.
"""

from __future__ import annotations

import json
import logging
import sys

from math_verify import parse, verify
from sympy import Expr
from sympy.core.relational import Relational

# math-verify's numeric tolerances are absolute (floats rounded to 6 decimals; an exact difference
# evaluated with evalf's chop, which zeroes anything below about 1e-15), so different tiny values
# compare equal: 1/2^99 and 1/2^98, 1e-7 and 2e-7. Two numbers further apart than this, relative to
# the larger, are different. 6-decimal agreement of values >= 0.1 is within it (0.333333 = 1/3).
RELATIVE_TOLERANCE = 1e-5


def equal(gold: list, answer: list) -> bool:
    """math-verify's verdict on two parsed answers, less the two ways it takes different values as equal."""
    g, a = gold[0], answer[0]
    if _constant_relation(g) and _constant_relation(a):
        # math-verify compares equations by solving them for their variables; with none, any two are
        # equal ("0.56 = 56\\%" and "0.56 = 57\\%"): compare them side by side
        return type(g) is type(a) and _equal_values(g.lhs, a.lhs) and _equal_values(g.rhs, a.rhs)
    return verify(gold, answer, timeout_seconds=None) and not relatively_distinct(g, a)


def _equal_values(a: Expr, b: Expr) -> bool:
    return verify(a, b, timeout_seconds=None) and not relatively_distinct(a, b)


def _constant_relation(expr: object) -> bool:
    return isinstance(expr, Relational) and not expr.free_symbols


def relatively_distinct(a: object, b: object) -> bool:
    """Both are sympy numbers (no free symbols) that differ by more than RELATIVE_TOLERANCE."""
    if not (isinstance(a, Expr) and isinstance(b, Expr) and a.is_number and b.is_number):
        return False
    try:
        x, y = complex(a.evalf(30)), complex(b.evalf(30))
    except (TypeError, ValueError, OverflowError):  # not a finite number: math-verify's verdict stands
        return False
    return abs(x - y) > RELATIVE_TOLERANCE * max(abs(x), abs(y))


def main() -> None:
    # math-verify warns on every call when its signal timeout is disabled; the
    # parent process is the timeout here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # The first comparison imports sympy's and the LaTeX parser's lazy parts (about a CPU-second):
    # done before `ready`, it is outside every call's wall-clock deadline.
    verify(parse("\\boxed{x^2+\\frac{1}{2}}", parsing_timeout=None), parse("\\boxed{0.5+x^2}", parsing_timeout=None),
           timeout_seconds=None)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            gold = parse(f"\\boxed{{{request['gt']}}}", parsing_timeout=None)
            answer = parse(f"\\boxed{{{request['pred']}}}", parsing_timeout=None)
            verdict = bool(gold and answer and equal(gold, answer))
        except Exception:  # any parser failure on model output means "not verified"
            verdict = False
        print(json.dumps({"equal": verdict}), flush=True)


if __name__ == "__main__":
    main()
