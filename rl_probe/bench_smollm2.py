"""A probe step and its sampling on a real model (SmolLM2-135M-Instruct) against what a user would pick instead.

- `bench_probe_step_vs_trl`: one `smollm2-cpu-v2` GRPO step (4 prompts x 8 rollouts of <= 48 tokens,
  sampling and update) against one step of TRL's `GRPOTrainer` on the same model, the same 32
  rendered prompts (the step's problems in the spec's template), the same reward, 8 generations
  per prompt, <= 48 completion tokens, temperature 1, beta 0, fp32, one optimizer step. Each
  engine runs in a fresh process (spawned) on the same thread count, so neither inherits the
  other's allocations; the headline compares the step's CPU-seconds (one thread: on an idle
  machine its wall-clock seconds), wall-clock ratios are printed beside it; the peak memory
  is each process's maxrss (model and optimizer included).
- `bench_sampling_vs_hf_generate`: sampling those 32 rollouts with the probe's sampler against HF
  `generate` (dynamic cache), new tokens per CPU-second of this process, medians over repeats.

The model is an HF directory: `$MIDPROBE_SMOLLM2` or models/smollm2-135m-instruct (where
`make smollm2` puts it); without it both benchmarks are skipped.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from rl_probe.prompts import Prompter, problems_within_length
from rl_probe.reward import score
from rl_probe.spec import get_probe_spec

MODEL_ENV = "MIDPROBE_SMOLLM2"
DEFAULT_MODEL = Path("models/smollm2-135m-instruct")
SPEC = "smollm2-cpu-v2"
PROBLEMS = Path(__file__).resolve().parent.parent / "data" / "gsm8k" / "probe-arith.jsonl"


class Skipped(Exception):
    """A benchmark that cannot run here (its model is absent)."""


def model_dir() -> Path:
    path = Path(os.environ.get(MODEL_ENV) or DEFAULT_MODEL)
    if not (path / "config.json").is_file():
        raise Skipped(f"no model (set ${MODEL_ENV} or run `make smollm2`; looked in {path})")
    return path


def _step_problems(spec, prompter, seed: int = 0, step: int = 1) -> list[dict]:
    """The problems a probe's step `step` draws (the same rule as `grpo_step`)."""
    from rl_probe.embedded import _stream_seed

    train, _, _ = problems_within_length(prompter, PROBLEMS, PROBLEMS)
    rng = np.random.default_rng(_stream_seed(seed, step, "prompts"))
    return [train[i] for i in rng.choice(len(train), spec.prompts_per_step, replace=False)]


def _load(path: Path, threads: int, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    spec = get_probe_spec(SPEC).model_copy(update={"dtype": dtype})
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return spec, tokenizer, model, Prompter(tokenizer, spec, model.generation_config.eos_token_id)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux


def _ours_step(path: Path, threads: int, dtype: str) -> dict:
    from rl_probe.embedded import _actor_config, grpo_step, keep_freed_memory, make_optimizer

    keep_freed_memory()  # as run_probe does
    spec, _, model, prompter = _load(path, threads, dtype)
    optimizer = make_optimizer(model, spec)
    problems = _step_problems(spec, prompter)
    # grpo_step draws step 1's problems from the list it gets: hand it exactly those
    started, cpu_started = time.perf_counter(), time.process_time()
    metrics = grpo_step(model, None, optimizer, prompter, problems, spec, 0, 1, _actor_config(spec))
    return {"step_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu_started,
            "gen_s": metrics["timing_s/gen"], "update_s": metrics["timing_s/update_actor"],
            "response_tokens": int(metrics["response_length/mean"] * spec.prompts_per_step * spec.group_size),
            "peak_rss_gb": _peak_rss_gb()}


def _trl_step(path: Path, threads: int) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    spec, tokenizer, model, prompter = _load(path, threads)
    problems = _step_problems(spec, prompter)
    dataset = Dataset.from_list([{"prompt": prompter.render(p), "answer": p["answer"]} for p in problems])

    def reward(completions, answer, **_):
        return [score(text, truth, spec.reward_variant).score for text, truth in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, *_, **__):
            self.step_s, self.cpu_s = time.perf_counter() - self.started, time.process_time() - self.cpu_started

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, fp16=False, report_to=[], save_strategy="no", logging_steps=1,
            max_steps=1, per_device_train_batch_size=spec.prompts_per_step * spec.group_size,
            gradient_accumulation_steps=1, num_generations=spec.group_size, max_completion_length=48,
            temperature=spec.temperature, top_p=spec.top_p, top_k=0, beta=0.0, learning_rate=spec.lr,
            weight_decay=spec.weight_decay, max_grad_norm=spec.grad_clip, seed=0, dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    return {"step_s": timer.step_s, "cpu_s": timer.cpu_s, "peak_rss_gb": _peak_rss_gb()}


def _in_fresh_process(func, *args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(func, args)


def bench_probe_step_vs_trl(threads: int = 1) -> dict:
    path = model_dir()
    try:
        import trl  # noqa: F401  (the `bench` extra)
    except ImportError:
        raise Skipped("no trl (pip install 'midprobe[bench]')") from None
    ours = _in_fresh_process(_ours_step, path, threads, "float32")
    ours_bf16 = _in_fresh_process(_ours_step, path, threads, "bfloat16")
    peer = _in_fresh_process(_trl_step, path, threads)
    return {  # per CPU-second of each one-thread process: on a shared machine wall-clock mostly measures the load
        "ours": 1 / ours["cpu_s"],
        "peer": 1 / peer["cpu_s"],
        "unit": "steps/cpu-s",
        "peer_name": "trl-grpo",
        "details": {
            "workload": f"{SPEC}: 4 prompts x 8 rollouts, <= 48 new tokens, one GRPO step; TRL GRPOTrainer "
                        f"{version('trl')}, same prompts, fp32, beta 0, one optimizer step",
            **{f"{name}_{key}": round(value, 2) for name, result in (("ours", ours), ("ours_bfloat16", ours_bf16),
                                                                   ("trl", peer)) for key, value in result.items()},
            "cpu_ratio_fp32": round(peer["cpu_s"] / ours["cpu_s"], 2),
            "cpu_ratio_bfloat16": round(peer["cpu_s"] / ours_bf16["cpu_s"], 2),
            "wall_clock_ratio_fp32": round(peer["step_s"] / ours["step_s"], 2),
            "wall_clock_ratio_bfloat16": round(peer["step_s"] / ours_bf16["step_s"], 2),
            "threads": threads,
        },
    }


def bench_sampling_vs_hf_generate(threads: int = 1, repeats: int = 3) -> dict:
    from rl_probe.sampler import left_pad, sample

    previous_threads = torch.get_num_threads()
    try:
        spec, _, model, prompter = _load(model_dir(), threads)
        prompts = [prompter.prompt_ids(p) for p in _step_problems(spec, prompter) for _ in range(spec.group_size)]
        padded, mask = left_pad(prompts, prompter.pad_id)
        new_tokens = spec.max_response_length

        def ours(dtype: torch.dtype) -> int:
            rollout = sample(model, prompts, max_new_tokens=new_tokens, stop_ids=prompter.stop_ids,
                             pad_id=prompter.pad_id, temperature=spec.temperature,
                             generator=torch.Generator().manual_seed(1), dtype=dtype)
            return int(rollout.response_lengths.sum())

        @torch.inference_mode()
        def hf_generate() -> int:
            torch.manual_seed(1)
            out = model.generate(padded, attention_mask=mask.long(), do_sample=True, temperature=spec.temperature,
                                 top_k=0, top_p=1.0, max_new_tokens=new_tokens, eos_token_id=prompter.stop_ids,
                                 pad_token_id=prompter.pad_id)
            response = out[:, padded.shape[1]:]
            is_stop = torch.isin(response, torch.tensor(prompter.stop_ids))
            return int(torch.where(is_stop.any(-1), is_stop.int().argmax(-1) + 1, response.shape[1]).sum())

        engines = {"ours": lambda: ours(torch.float32), "ours-bfloat16": lambda: ours(torch.bfloat16),
                   "hf-generate": hf_generate}
        rates = {name: [] for name in engines}
        for _ in range(repeats):  # interleaved, so that the load hits every engine alike
            for name, run in engines.items():
                started = time.process_time()
                tokens = run()
                rates[name].append(tokens / (time.process_time() - started))
    finally:
        torch.set_num_threads(previous_threads)
    rate = {name: statistics.median(r) for name, r in rates.items()}
    return {
        "ours": rate["ours"],
        "peer": rate["hf-generate"],
        "unit": "tok/cpu-s",
        "peer_name": "hf-generate",
        "details": {
            "workload": f"{SPEC}'s 32 rollouts (4 prompts x 8), <= {new_tokens} new tokens, temperature 1",
            **{f"{name}_tok_per_cpu_s": round(r, 1) for name, r in rate.items()},
            "ratio_bfloat16": round(rate["ours-bfloat16"] / rate["hf-generate"], 2),
            "threads": threads,
            "repeats": repeats,
        },
    }

