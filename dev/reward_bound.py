"""Measure the reward on real train solutions and its wall-clock bound under load.

    python dev/reward_bound.py [--adversarial 1000] [--every 1]

Starts two CPU-bound processes (the load), then scores: every GSM8K/MATH train solution
against its gold answer and against a wrong one (see rl_probe/reward_calibration.py), and the
adversarial responses, each call timed on the wall clock. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from rl_probe.reward import warm_up_verifier
from rl_probe.reward_calibration import adversarial_outputs, gsm8k_cases, math_cases, measure, measure_wall_bound


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adversarial", type=int, default=1000)
    parser.add_argument("--every", type=int, default=1, help="take every n-th train solution")
    args = parser.parse_args()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        warm_up_verifier()
        result = {"load": "2 CPU-bound processes",
                  "adversarial": measure_wall_bound(adversarial_outputs(args.adversarial)),
                  "gsm8k_train": measure(gsm8k_cases(args.every)),
                  "math_train": measure(math_cases(args.every))}
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
