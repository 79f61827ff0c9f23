"""Measure where a checkpoint's sampled pass@k lies on a problem set, under a probe spec.

    python dev/probe_band.py models/smollm2-135m-instruct data/math/probe-l1.jsonl \
        --spec smollm2-cpu-v2 [--set max_response_length=128 --set template=chat] \
        [--problems 32] [--samples 8]

What the probe's GRPO needs is problems where the checkpoint sometimes, not always, gets the
reward (docs/smollm2.md); this measures it before a sweep pays for a probe. The first
`--problems` problems of the set (problem sets are in hash order), `--samples` samples each (0: none) with
the spec's template, temperature, top-p, response length and reward: the probe's own Prompter,
sampler (`rl_probe.embedded.generate`) and `score`, so the numbers are the ones its step-0
profile would show. Prints one JSON object: mean accuracy and unbiased pass@k with 95 %
bootstrap intervals over problems, the share of responses with a box (a format error
otherwise: reward -1 under the default reward), the share cut off at the response length, the
mean reward, and wall and CPU seconds (the machine's load average beside them). `--show N`
prints N responses first.

`--grpo-steps N` then runs N of the probe's GRPO steps (`rl_probe.embedded.grpo_step`, the spec's
rollouts, update and optimizer) on the set and adds their wall and CPU seconds per step; run it
with `--threads 1`, as a sweep runs each probe.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.cli import _resolve_spec as resolve_spec
from rl_probe.embedded import _actor_config, _generator, generate, grpo_step, pass_at_k
from rl_probe.prompts import Prompter, load_problems
from rl_probe.reward import score

BOOTSTRAP = 2000


def bootstrap_interval(per_problem: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95 % percentile interval of the mean over problems, resampling problems."""
    draws = rng.integers(0, len(per_problem), (BOOTSTRAP, len(per_problem)))
    means = per_problem[draws].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("problem_set", type=Path)
    parser.add_argument("--spec", required=True, help="a shipped spec name or a YAML spec file")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a spec field (YAML value), as `midprobe probe --set`")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--show", type=int, default=0, help="print this many responses")
    parser.add_argument("--grpo-steps", type=int, default=0, help="then time this many GRPO steps")
    args = parser.parse_args()

    spec = resolve_spec(args.spec, args.set)  # as `midprobe probe --spec ... --set ...`
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    prompter = Prompter(tokenizer, spec, model.generation_config.eos_token_id)
    problems, counts = prompter.within_length(load_problems(args.problem_set), str(args.problem_set))
    problems = problems[: args.problems]
    report = {"spec": spec.name, "spec_hash": spec.content_hash(), "template": spec.template.name,
              "temperature": spec.temperature, "max_response_length": spec.response_length_at(0),
              "reward_variant": spec.reward_variant, "problem_set": str(args.problem_set),
              "prompt_length_counts": counts, "problems": len(problems), "threads": args.threads}
    if args.samples:
        report |= band(model, prompter, problems, spec, args.samples, args.seed, args.show)
    if args.grpo_steps:
        report["grpo_steps"] = time_grpo_steps(model, prompter, problems, spec, args.grpo_steps, args.seed)
    print(json.dumps(report))


def band(model, prompter: Prompter, problems: list[dict], spec, n: int, seed: int, show: int) -> dict:
    """Sampled accuracy and pass@k of `n` samples per problem, with their cost."""
    repeated = [p for p in problems for _ in range(n)]
    wall, cpu = time.perf_counter(), cpu_seconds()
    texts, lengths, finished = generate(model, prompter, [prompter.prompt_ids(p) for p in repeated],
                                        max_new_tokens=spec.response_length_at(0), temperature=spec.temperature,
                                        generator=_generator(seed, 0, "band"))
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    results = [score(t, p["answer"], spec.reward_variant) for t, p in zip(texts, repeated)]
    for problem, text, result in list(zip(repeated, texts, results))[:show]:
        print(f"--- {problem['id']} gold={problem['answer']} pred={result.pred} reward={result.score}\n{text}\n")

    correct = np.array([r.acc for r in results], dtype=float).reshape(len(problems), n)
    rng = np.random.default_rng(seed)
    report = {"samples": n, "mean_acc": float(correct.mean()),
              "mean_acc_ci95": bootstrap_interval(correct.mean(axis=1), rng)}
    for k in sorted({1, 2, 4, 8, n} & set(range(1, n + 1))):
        per_problem = np.array([pass_at_k(n, int(c), k) for c in correct.sum(axis=1)])
        report[f"pass@{k}"] = float(per_problem.mean())
        report[f"pass@{k}_ci95"] = bootstrap_interval(per_problem, rng)
    return report | {
        "boxed_share": float(np.mean([r.format_ok for r in results])),
        "mean_reward": float(np.mean([r.score for r in results])),
        "clipped_share": float(1 - np.mean(finished)),
        "mean_response_tokens": float(np.mean(lengths)),
        "responses": len(texts), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "load_avg_1m_at_end": os.getloadavg()[0],
    }


def time_grpo_steps(model, prompter: Prompter, problems: list[dict], spec, steps: int, seed: int) -> list[dict]:
    """Wall and CPU seconds of `steps` GRPO steps from the checkpoint, with the step's own timings
    (each printed as it ends)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    reference = None if spec.kl_coef == 0 else AutoModelForCausalLM.from_pretrained(
        model.name_or_path, dtype=torch.float32).eval()
    timings = []
    for step in range(1, steps + 1):
        wall, cpu = time.perf_counter(), cpu_seconds()
        metrics = grpo_step(model, reference, optimizer, prompter, problems, spec, seed, step, _actor_config(spec))
        timings.append({"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(cpu_seconds() - cpu, 1),
                        "gen_s": round(metrics["timing_s/gen"], 1), "update_s": round(metrics["timing_s/update_actor"], 1),
                        "reward": metrics.get("critic/score/mean"), "response_length": metrics.get("response_length/mean"),
                        "load_avg_1m": os.getloadavg()[0]})
        print(json.dumps({"grpo_step": step, **timings[-1]}), flush=True)
    return timings


if __name__ == "__main__":
    main()
