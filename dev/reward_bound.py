"""Measure the reward on real train solutions and its wall-clock bound under load.

    python dev/reward_bound.py [--adversarial 1000] [--every 1]

Starts two CPU-bound processes (the load), then scores: every GSM8K/MATH train solution
against its gold answer and against a wrong one (see bench/reward_calibration.py), then the
adversarial responses, each call timed on the wall clock, with the load average.
Prints one JSON line per part.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from rl_probe.reward import warm_up_verifier
from bench.reward_calibration import adversarial_outputs, gsm8k_cases, math_cases, measure, measure_wall_bound


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adversarial", type=int, default=1000)
    parser.add_argument("--every", type=int, default=1, help="take every n-th train solution")
    args = parser.parse_args()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for name, cases in (("gsm8k_train", gsm8k_cases), ("math_train", math_cases)):
            warm_up_verifier()
            print(json.dumps({name: measure(cases(args.every))}), flush=True)
        # last, so that the 1-minute load average printed with it has caught up with the burners
        warm_up_verifier()
        result = measure_wall_bound(adversarial_outputs(args.adversarial))
        result["load_average_1_5_15min"] = [round(x, 1) for x in os.getloadavg()]
        print(json.dumps({"adversarial": result}), flush=True)
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
