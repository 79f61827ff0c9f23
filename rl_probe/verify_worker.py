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
import sys


def main() -> None:
    import logging

    from math_verify import parse, verify

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
            equal = bool(gold and answer and verify(gold, answer, timeout_seconds=None))
        except Exception:  # any parser failure on model output means "not verified"
            equal = False
        print(json.dumps({"equal": equal}), flush=True)


if __name__ == "__main__":
    main()
