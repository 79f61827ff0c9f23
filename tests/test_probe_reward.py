import os
import random
import re
import string
import time

import pytest

from rl_probe import reward
from rl_probe.reward import VERIFY_WALL_S, has_repetition, score, warm_up_verifier


@pytest.fixture(scope="module", autouse=True)
def verifier():
    warm_up_verifier()


@pytest.mark.parametrize(
    "response, truth, expected",
    [
        ("so the answer is \\boxed{0.5}", "\\frac{1}{2}", (1.0, True, True)),
        ("\\boxed{\\frac{1}{2}}", "0.5", (1.0, True, True)),
        ("\\boxed{1,000}", "1000", (1.0, True, True)),
        ("\\boxed{x^2+1}", "1+x^2", (1.0, True, True)),  # symbolic: math-verify
        ("\\boxed{\\sqrt{4}}", "2", (1.0, True, True)),
        ("\\boxed{3}", "4", (0.0, False, True)),
        ("the answer is 4", "4", (-1.0, False, False)),  # no box
        ("\\boxed{4} so \\boxed{4}", "4", (-1.0, True, False)),  # several boxes
        ("\\boxed{4", "4", (-1.0, False, False)),  # unterminated box
        ("6 * 12 = 72\n#### 72", "72", (1.0, True, True)),  # GSM8K style
        ("#### 71", "72", (0.0, False, True)),
    ],
)
def test_default_variant_hand_cases(response, truth, expected):
    result = score(response, truth)
    assert (result.score, result.acc, result.format_ok) == expected


def test_variants():
    assert score("\\boxed{3}", "4", "wrong-half").score == -0.5
    assert score("\\boxed{4}", "4", "wrong-half").score == 1.0
    looping = "\\boxed{4} I am done. I am done. I am done. I am done. I am done."
    assert score("\\boxed{4} then stop", "4", "repetition").score == 1.0
    assert score(looping.replace("\\boxed{4} ", "") + " \\boxed{4}", "4", "repetition").score == -1.0
    assert score(looping.replace("\\boxed{4} ", "") + " \\boxed{4}", "4", "default").score == 1.0
    assert score(looping, "4").repeated
    with pytest.raises(ValueError):
        score("\\boxed{4}", "4", "nonsense")


def test_repetition_matches_octothinker_regex():
    regex = re.compile(r"(.{5,}?)\1{4,}", re.DOTALL)
    rng = random.Random(0)
    for _ in range(300):
        unit = "".join(rng.choice("ab \n") for _ in range(rng.randint(1, 8)))
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 10)))
        text += unit * rng.randint(1, 7) + "".join(rng.choice("ab") for _ in range(rng.randint(0, 10)))
        assert has_repetition(text) == bool(regex.search(text)), text


ADVERSARIAL = [
    "\\boxed{" + "{" * 5000 + "}" * 5000 + "}",
    "\\boxed{9^9^9^9}",
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{10^{10^{10^{10}}}!}",
    "x" * 100_000,
    "\\boxed{" * 20_000,
    "ab" * 50_000 + "\\boxed{1}",
    "\\boxed{" + "\\frac{" * 3000 + "}",
    "\\boxed{" + "".join(chr(c) for c in range(0x2200, 0x2300)) * 3 + "}",
    "".join(random.Random(1).choice(string.printable + "∑∫√π𝔸😀") for _ in range(100_000)),
    "\\boxed{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{2}}}}}}}}}",
    "\\boxed{__import__('os').system('touch /tmp/pwned')}",
]


def _scoring_work(response: str, truth: str):
    """(result, CPU seconds spent on this call by this process and the math-verify worker).

    A killed worker's CPU time reaches os.times() when it is reaped; its CPU
    time before the call (start-up) is read from /proc and taken off.
    """
    reward.warm_up_verifier()  # a worker killed by the previous call is replaced now, not inside the call
    worker = reward._verifier._active
    worker_before = reward._cpu_seconds(worker.pid)
    t0 = os.times()
    result = score(response, truth)
    t1 = os.times()
    own = (t1.user + t1.system) - (t0.user + t0.system)
    reaped = (t1.children_user + t1.children_system) - (t0.children_user + t0.children_system)
    return result, own + max(0.0, reaped - worker_before)


@pytest.mark.parametrize("response", ADVERSARIAL)
def test_adversarial_outputs_scored_within_a_second(response):
    # The bound is on work (CPU seconds), which is what the reward enforces: on
    # an idle machine that is also the wall time, on a loaded one wall time
    # stretches but the verdict does not change. Wall time is capped anyway.
    started = time.monotonic()
    result, cpu = _scoring_work(response, "5")
    assert cpu < 1.0
    assert time.monotonic() - started < VERIFY_WALL_S + 1.0
    assert not result.acc


def test_scoring_works_after_a_timeout():
    score("\\boxed{9^{9^{9^{9}}}}", "5")  # kills the worker; the spare takes over
    result, cpu = _scoring_work("\\boxed{2^{10}}", "1024")
    assert result.acc and cpu < 1.0
