import os
import random
import re
import string
import subprocess
import sys
import time

import pytest

from data_recipes.calibration import math_train
from rl_probe import reward
from rl_probe.reward import SCORE_WALL_S, has_repetition, last_boxed, score, warm_up_verifier
from bench.reward_calibration import (adversarial_outputs, cpu_and_run_queue_s, gsm8k_cases, math_cases, measure,
                                         measure_wall_bound, wrong_answer)


# Correctness tests score with this wall-clock budget instead of the probe's 1 s: on a loaded test
# machine a verification that runs out of time counts as wrong, which would make a right answer fail
# and a wrong one pass for the wrong reason. The time bound has its own tests below.
CORRECTNESS_WALL_S = 60.0


def _score(response: str, truth: str, variant: str = "default"):
    return score(response, truth, variant, wall_s=CORRECTNESS_WALL_S)


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
        ("\\boxed{4} so \\boxed{4}", "4", (1.0, True, True)),  # several boxes: the last one counts
        ("\\boxed{3} so \\boxed{4}", "4", (1.0, True, True)),
        ("\\boxed{4} so \\boxed{3}", "4", (0.0, False, True)),
        ("\\boxed{4", "4", (-1.0, False, False)),  # unterminated box
        ("6 * 12 = 72\n#### 72", "72", (1.0, True, True)),  # GSM8K style
        ("#### 71", "72", (0.0, False, True)),
    ],
)
def test_default_variant_hand_cases(response, truth, expected):
    result = _score(response, truth)
    assert (result.score, result.acc, result.format_ok) == expected


def test_variants():
    assert _score("\\boxed{3} so \\boxed{4}", "4", "single-box").score == -1.0  # OctoThinker's format rule
    assert _score("\\boxed{4}", "4", "single-box").score == 1.0
    assert _score("\\boxed{3}", "4", "wrong-half").score == -0.5
    assert _score("\\boxed{4}", "4", "wrong-half").score == 1.0
    looping = "\\boxed{4} I am done. I am done. I am done. I am done. I am done."
    assert _score("\\boxed{4} then stop", "4", "repetition").score == 1.0
    assert _score(looping.replace("\\boxed{4} ", "") + " \\boxed{4}", "4", "repetition").score == -1.0
    assert _score(looping.replace("\\boxed{4} ", "") + " \\boxed{4}", "4", "default").score == 1.0
    assert _score(looping, "4").repeated
    with pytest.raises(ValueError):
        _score("\\boxed{4}", "4", "nonsense")


@pytest.mark.parametrize("variant", ["default", "single-box", "wrong-half", "repetition"])
def test_an_empty_box_is_no_answer(variant):
    assert _score("\\boxed{}", "4", variant).score == -1.0
    assert _score("The answer is \\boxed{ }.", "4", variant).format_ok is False
    # only non-empty boxes count: the last one is the answer, and one is not several
    assert _score("\\boxed{4} then \\boxed{}", "4", variant).score == 1.0
    # a GSM8K-style answer beside an empty box is still an answer
    assert _score("\\boxed{}\n#### 4", "4", variant).score == 1.0


def test_echoing_a_boxed_templates_instruction_earns_nothing():
    from rl_probe.spec import _BOXED_INSTRUCTION, PROMPT_TEMPLATES

    boxed_templates = [t for t in PROMPT_TEMPLATES.values() if _BOXED_INSTRUCTION in t.text]
    assert len(boxed_templates) >= 3 and "\\boxed{}" in _BOXED_INSTRUCTION
    for variant in ("default", "single-box"):
        echoed = _score(_BOXED_INSTRUCTION, "4", variant)
        assert (echoed.score, echoed.format_ok) == (-1.0, False)
        # the echoed instruction beside the right answer: one answer, not two boxes
        assert _score(f"{_BOXED_INSTRUCTION}\n2 + 2 = 4, so \\boxed{{4}}.", "4", variant).score == 1.0


def test_held_out_scoring_gives_math_verify_more_than_the_training_reward_bound(monkeypatch):
    """A verification that needs more wall time than the training bound (a loaded machine) is
    wrong in the training reward and right in evaluation, in both engines' evaluation paths."""
    from rl_probe.reward import EVAL_SCORE_WALL_S, score_held_out
    from rl_probe.verl_reward import compute_score

    class SlowVerifier:  # decides "equal" only when given over 2 s of wall time
        def equal(self, pred, gold, deadline):
            return deadline - time.monotonic() > 2.0

    assert EVAL_SCORE_WALL_S > SCORE_WALL_S + 2.0
    monkeypatch.setattr(reward, "_verifier", SlowVerifier())
    symbolic = "\\boxed{x^2+1}"  # not decided by normalisation: math-verify's
    assert score(symbolic, "1+x^2").acc is False
    assert score_held_out(symbolic, "1+x^2").acc is True
    assert compute_score("toy", symbolic, "1+x^2", extra_info={"split": "train"})["acc"] == 0.0
    assert compute_score("toy", symbolic, "1+x^2", extra_info={"split": "val"})["acc"] == 1.0


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


@pytest.mark.parametrize("response", ADVERSARIAL)
def test_adversarial_outputs_scored_within_the_wall_budget(response):
    # A call's wall time is its CPU time, its wait for a core and the time it is blocked (on the
    # worker, a lock, a thread). The code bounds the first and the last; the wait for a core is the
    # test machine's load, excluded here where schedstat tells it (the slow test checks the total).
    before, started, cpu_started = cpu_and_run_queue_s(), time.monotonic(), time.thread_time()
    result = score(response, "5")
    wall, cpu = time.monotonic() - started, time.thread_time() - cpu_started
    on_core_or_queued = cpu_and_run_queue_s() - before if before is not None else 0.0
    assert wall - on_core_or_queued <= SCORE_WALL_S  # blocked: at most until the deadline
    assert cpu <= 0.2 * SCORE_WALL_S  # this process's own work on the response (about 25 ms at most)
    assert not result.acc


def test_scoring_works_after_a_timeout():
    warm_up_verifier()
    # sympy evaluates the factorial of a 198-digit number: past any deadline, the worker is killed
    # (9^{9^{9^{9}}} never reaches it: power towers are refused before math-verify)
    assert not score("\\boxed{99^{99}!}", "5").acc
    assert reward._verifier._active is None  # killed; a spare takes over
    warm_up_verifier()  # waits for the spare to load (seconds on a busy machine)
    assert _score("\\boxed{x^2+1}", "1+x^2").acc


@pytest.mark.parametrize(
    "pred, gold",
    [("x = 58,500", "58500"), ("x = 10,\\!080", "10080"), ("18{,}360", "18360"), ("x \\in [-2,7]", "[-2,7]"),
     ("10", "10\\%"), ("10\\%", "10"), ("\\text{x = (A)}", "(A)"), ("2 \\text{ euros}", "2"), ("\\$42409", "42409"),
     ("k = \\frac{-33}{2}", "-\\frac{33}{2}"), ("90^\\circ", "90"), ("45 \\text{ seconds}", "45"), ("\\text{(C)}", "(C)")],
)
def test_normalisation_accepts_equal_answers(pred, gold):
    assert _score(f"so \\boxed{{{pred}}}", gold).acc


@pytest.mark.parametrize("pred, gold", [("x = 58,501", "58500"), ("2i", "2"), ("3x", "3"), ("10\\%", "1"),
                                        ("x \\in [-2,8]", "[-2,7]"), ("5", "50"),
                                        # different tiny numbers (math-verify's tolerances are absolute)
                                        ("2^{-99}", "2^{-98}"), ("0.0000002", "\\sqrt{10^{-14}}"),
                                        # a different measurement unit or power of one
                                        ("2400 \\text{ cm}^3", "2400 \\text{ cm}^2"), ("5 feet", "5 meters"),
                                        ("5225 inches", "5225 \\text{ cubic inches}"),
                                        # the value agrees, its stated approximation does not
                                        ("\\frac23 \\approx 0.68", "\\frac23 \\approx 0.67"),
                                        # an equation without a variable: each side counts
                                        ("0.5 = 51\\%", "0.5 = 50\\%"), ("0.4 = 50\\%", "0.5 = 50\\%")])
def test_normalisation_rejects_different_answers(pred, gold):
    assert not _score(f"so \\boxed{{{pred}}}", gold).acc


@pytest.mark.parametrize("pred, gold", [("2400 \\text{ square centimeters}", "2400 \\mbox{ cm}^2"),
                                        ("2400", "2400 \\mbox{ cm}^2"), ("9 ways", "9 \\text{ values}"),
                                        ("\\frac23", "\\$\\dfrac23 \\approx \\$0.67"),
                                        ("8.24", "\\approx 8.24 \\text{ mph}"), ("0.333333", "\\frac13")])
def test_units_approximations_and_tolerances_that_agree_are_accepted(pred, gold):
    assert _score(f"so \\boxed{{{pred}}}", gold).acc


# The MATH train solutions whose wrong answer (last digit changed) the reward once accepted.
@pytest.mark.parametrize("problem_id", ["train/precalculus/837",  # 1/2^{98}: math-verify's absolute tolerance
                                        "train/prealgebra/1316",  # 2400 cm^2: the unit was dropped
                                        "train/counting_and_probability/360",  # 2/3 \approx 0.67
                                        "train/counting_and_probability/557"])  # 0.56 = 56%: no variable to solve for
def test_real_solution_right_against_its_answer_and_wrong_against_a_changed_one(problem_id):
    solution = next(r["solution"] for r in math_train() if r["id"] == problem_id)
    gold = last_boxed(solution)
    assert _score(solution, gold).acc
    assert not _score(solution, wrong_answer(gold)).acc


def test_real_train_solutions_score_right_and_never_accept_a_wrong_answer():
    # every 25th GSM8K/MATH train solution (data/README.md); the full sets: dev/reward_bound.py
    warm_up_verifier()  # the adversarial tests above killed workers: start from a loaded one
    for cases in (gsm8k_cases(every=25), math_cases(every=25)):
        result = measure(cases, wall_s=CORRECTNESS_WALL_S)
        assert result["accuracy"] >= 0.995 and result["accuracy_normalized_gold"] >= 0.995, result
        assert result["wrong_answers"] > 0.9 * len(cases) and result["wrong_accepted"] == 0, result


@pytest.mark.slow
def test_adversarial_wall_bound_under_load():
    """The issue's goal: 1,000 adversarial outputs, each within SCORE_WALL_S of wall time while two
    CPU-bound processes run, none raising. Holds on the 2-core development machine with nothing
    else running; other jobs on top (load average 9 to 35, measured) make this process wait for a core."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        result = measure_wall_bound(adversarial_outputs(1000))
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    assert result["raised"] == 0 and result["max_wall_s"] <= SCORE_WALL_S, (
        f"{result['over_budget']} calls over {SCORE_WALL_S} s, slowest {result['max_wall_s']} s, longest blocked "
        f"{result['max_blocked_s']} s (the rest: waiting for a core), load average {os.getloadavg()}, {result['errors']}")
