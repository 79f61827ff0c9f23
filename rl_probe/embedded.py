"""The embedded probe engine: GRPO on one CPU / GPU process, built on verl's core_algos.

Our part is the loop, the sampler and the bookkeeping; the advantage, policy
loss, loss aggregation, KL, entropy and data metrics are verl's own
functions, so the numbers mean what they mean in a verl run.

Every random stream is seeded from (seed, step, purpose): prompt choice,
rollouts, evaluation and the profile. A resumed run therefore needs only
the policy, optimizer and step from `state/` to continue bit for bit.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import platform
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl import DataProto
from verl.trainer.ppo.core_algos import agg_loss, get_adv_estimator_fn, get_policy_loss_fn, kl_penalty
from verl.trainer.ppo.metric_utils import compute_data_metrics

from rl_probe.prompts import Prompter, problems_within_length
from rl_probe.reward import RewardResult, boxed_first, has_reflection, score, score_held_out, warm_up_verifier
from rl_probe.sampler import Rollout, sample, teacher_forced
from rl_probe.spec import ProbeSpec
from rl_probe.summary import ProbeSummary
from runfiles import (COMPLETIONS_FILE, METRICS_FILE, append_metrics, atomic_write, keep_metrics_through,
                      read_jsonl, read_metrics, replace_durably)

MALLOC_TRIM_THRESHOLD, MALLOC_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
GENERATION_BATCH = 128  # sequences per sampler call in evaluation and profiling
COMPLETIONS_PER_STEP = 4  # held-out answers kept at the first and the last eval, for the report

MetricsCallback = Callable[[int, dict], None]


def run_probe(
    checkpoint: Path,
    spec: ProbeSpec,
    train_set: Path,
    eval_set: Path,
    seed: int,
    out_dir: Path,
    on_metrics: MetricsCallback | None = None,
    keep_policy: bool = False,
    device: str = "cpu",
) -> dict:
    """Run (or resume) the probe of one HF checkpoint on `device`; returns the summary written to summary.json.

    While it runs, state/ holds the policy and optimizer a resume needs. A finished probe keeps
    only the final policy, as an HF directory under policy/, when `keep_policy`; the optimizer
    state (twice the model in AdamW) is dropped, so a probe's footprint is at most one model.
    """
    if spec.engine != "embedded":
        raise ValueError(f"probe spec {spec.name!r} is for the {spec.engine!r} engine, not 'embedded'")
    out_dir = Path(out_dir)
    if (out_dir / "summary.json").is_file():  # finished before a crash kept it from being published
        summary = json.loads((out_dir / "summary.json").read_text())
        if (summary["spec_hash"], summary["seed"]) != (spec.content_hash(), seed):
            raise ValueError(f"{out_dir} holds a probe with another spec or seed; use a fresh out_dir")
        return summary
    (out_dir / "rollouts").mkdir(parents=True, exist_ok=True)
    started = time.time()
    keep_freed_memory()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(device).eval()
    optimizer = make_optimizer(model, spec)
    reference = _frozen_copy(checkpoint, device) if spec.kl_coef > 0 else None
    prompter = Prompter(tokenizer, spec, model.generation_config.eos_token_id)
    train, evals, prompt_counts = problems_within_length(prompter, train_set, eval_set)
    if len(train) < spec.prompts_per_step:
        raise ValueError(f"{train_set}: {len(train)} usable problems, the spec needs {spec.prompts_per_step} per step")
    warm_up_verifier()

    state = CheckpointState(out_dir / "state", spec, seed)
    start_step = state.restore(model, optimizer)
    log = MetricsLog(out_dir / METRICS_FILE, keep_through_step=start_step, on_metrics=on_metrics)
    timings: dict[str, float] = defaultdict(float)

    if start_step == 0:
        t0 = time.time()
        profile = base_profile(model, prompter, train, evals, spec, seed)
        _write_json(out_dir / "profile.json", profile)
        timings["profile_s"] += time.time() - t0
        t0 = time.time()
        log.write(0, {**evaluate(model, prompter, evals, spec, seed, 0, out_dir), **prompt_metrics(prompt_counts)})
        timings["eval_s"] += time.time() - t0

    actor_config = _actor_config(spec)
    for step in range(start_step + 1, spec.steps + 1):
        t0 = time.time()
        metrics = grpo_step(model, reference, optimizer, prompter, train, spec, seed, step, actor_config)
        timings["train_s"] += time.time() - t0
        if step % spec.eval_every == 0 or step == spec.steps:
            t0 = time.time()
            metrics.update(evaluate(model, prompter, evals, spec, seed, step, out_dir))
            timings["eval_s"] += time.time() - t0
        log.write(step, metrics)
        if step % spec.checkpoint_every == 0 or step == spec.steps:
            state.save(step, model, optimizer)
    timings["total_s"] = time.time() - started

    if keep_policy:
        model.save_pretrained(out_dir / "policy")
        tokenizer.save_pretrained(out_dir / "policy")
    write_completions(out_dir)
    summary = ProbeSummary.from_metrics(
        read_metrics(out_dir / METRICS_FILE), json.loads((out_dir / "profile.json").read_text()), spec=spec,
        engine="embedded", seed=seed, checkpoint=checkpoint, prompts=prompt_counts, timings=timings,
    ).write(out_dir / "summary.json")
    state.drop()
    return summary


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for the next allocation instead of returning it to the kernel.

    Above its mmap threshold (32 MiB at most) malloc maps every allocation fresh and unmaps it when
    freed, so each mini-batch's vocabulary-wide logits, log-softmax and their gradients are
    page-faulted in again, zero-filled by the kernel, at every step. Served from the heap and not
    trimmed, the same pages are reused; the process keeps its peak size instead. No-op off glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(MALLOC_MMAP_MAX, 0)
    libc.mallopt(MALLOC_TRIM_THRESHOLD, 2 ** 31 - 1)


def make_optimizer(model, spec: ProbeSpec) -> torch.optim.AdamW:
    # fused: one kernel over all parameters; the per-tensor loop cost a 135M model ~0.6 s a step
    return torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, fused=True)


# ---------------------------------------------------------------- prompt-length counts as metrics


def prompt_metrics(counts: dict) -> dict:
    return {f"data/{split}_prompts_{kind}": counts[split][kind]
            for split in ("train", "eval") for kind in ("kept", "dropped")}


# ---------------------------------------------------------------- random streams


def _stream_seed(seed: int, step: int, purpose: str) -> int:
    digest = hashlib.sha256(f"{seed}/{step}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(seed: int, step: int, purpose: str, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_stream_seed(seed, step, purpose))


def _compute_dtype(spec: ProbeSpec) -> torch.dtype:
    return getattr(torch, spec.dtype)


# ---------------------------------------------------------------- GRPO step


def _actor_config(spec: ProbeSpec):
    # The fields verl's policy loss reads from ActorConfig. global_batch_info holds no batch
    # sizes because one process aggregates over its whole mini-batch; its loss_scale_factor is
    # Dr.GRPO's constant divisor (seq-mean-token-sum-norm), the generation budget, where verl
    # would otherwise divide by the mini-batch's longest response (actor.loss_scale_factor).
    return OmegaConf.create(
        {
            "clip_ratio": spec.clip_ratio_low,
            "clip_ratio_low": spec.clip_ratio_low,
            "clip_ratio_high": spec.clip_ratio_high,
            "clip_ratio_c": spec.clip_ratio_c,
            "global_batch_info": {"loss_scale_factor": spec.loss_scale_factor},
        }
    )


def grpo_step(model, reference, optimizer, prompter: Prompter, train: list[dict], spec: ProbeSpec,
              seed: int, step: int, actor_config) -> dict:
    t0 = time.time()
    rng = np.random.default_rng(_stream_seed(seed, step, "prompts"))
    problems = [train[i] for i in rng.choice(len(train), spec.prompts_per_step, replace=False)]
    grouped = [p for p in problems for _ in range(spec.group_size)]
    max_new = spec.response_length_at(step)
    device, dtype = model.device, _compute_dtype(spec)
    rollout = sample(
        model,
        [prompter.prompt_ids(p) for p in grouped],
        max_new_tokens=max_new,
        stop_ids=prompter.stop_ids,
        pad_id=prompter.pad_id,
        temperature=spec.temperature,
        top_p=spec.top_p,
        generator=_generator(seed, step, "rollout", device),
        dtype=dtype,
    )
    texts = prompter.decode(rollout)
    results = [score(text, p["answer"], spec.reward_variant) for text, p in zip(texts, grouped)]
    t_gen = time.time() - t0

    rewards = np.array([r.score for r in results])
    if spec.reward_control == "random":
        rewards = shuffled_within_groups(rewards, spec.group_size,
                                         np.random.default_rng(_stream_seed(seed, step, "reward-control")))
    mask = rollout.response_mask
    lengths = rollout.response_lengths
    token_scores = torch.zeros(mask.shape, device=device)
    token_scores[torch.arange(len(results), device=device), lengths - 1] = torch.tensor(
        rewards, dtype=token_scores.dtype, device=device)
    uids = np.array([f"{step}/{p['id']}" for p in grouped], dtype=object)
    advantages, returns = get_adv_estimator_fn(spec.adv_estimator)(
        token_level_rewards=token_scores, response_mask=mask, index=uids,
        norm_adv_by_std_in_grpo=spec.norm_adv_by_std,
    )
    with torch.no_grad():
        if spec.bypass_mode:
            old_log_probs = rollout.log_probs
        else:
            old_log_probs, _ = teacher_forced(model, rollout.prompt_ids, rollout.prompt_mask,
                                              rollout.response_ids, mask, spec.temperature, dtype=dtype)
        ref_log_probs = None
        if reference is not None:
            ref_log_probs, _ = teacher_forced(reference, rollout.prompt_ids, rollout.prompt_mask,
                                              rollout.response_ids, mask, spec.temperature, dtype=dtype)

    t1 = time.time()
    update = _update(model, optimizer, spec, actor_config, rollout, old_log_probs, ref_log_probs, advantages)
    t_update = time.time() - t1

    metrics = compute_data_metrics(_as_data_proto(rollout, token_scores, advantages, returns, max_new), use_critic=False)
    metrics.update(update)
    metrics.update(behaviour_metrics(texts, results, lengths, spec.group_size))
    n_tokens = int(mask.sum() + rollout.prompt_mask.sum())
    metrics.update({
        "training/global_step": step,
        "timing_s/gen": t_gen,
        "timing_s/update_actor": t_update,
        "timing_s/step": time.time() - t0,
        "perf/total_num_tokens": n_tokens,
        "perf/throughput": n_tokens / (time.time() - t0),
    })
    return metrics


def shuffled_within_groups(rewards: np.ndarray, group_size: int, rng: np.random.Generator) -> np.ndarray:
    """The random-reward control's rewards: each group's rewards (consecutive rows) in a random order."""
    return rng.permuted(rewards.reshape(-1, group_size), axis=1).reshape(-1)


def _update(model, optimizer, spec: ProbeSpec, actor_config, rollout: Rollout, old_log_probs, ref_log_probs,
            advantages) -> dict:
    """ppo_epochs passes over mini-batches of whole groups, as verl's actor does (no shuffling)."""
    policy_loss_fn = get_policy_loss_fn(spec.policy_loss)
    rows_per_mini_batch = spec.mini_batch_prompts * spec.group_size
    collected = defaultdict(list)
    for _ in range(spec.ppo_epochs):
        for start in range(0, len(advantages), rows_per_mini_batch):
            rows = slice(start, start + rows_per_mini_batch)
            mask = rollout.response_mask[rows]
            log_probs, entropy = teacher_forced(model, rollout.prompt_ids[rows], rollout.prompt_mask[rows],
                                                rollout.response_ids[rows], mask, spec.temperature,
                                                dtype=_compute_dtype(spec))
            pg_loss, pg_metrics = policy_loss_fn(
                old_log_prob=old_log_probs[rows], log_prob=log_probs, advantages=advantages[rows],
                response_mask=mask, loss_agg_mode=spec.loss_agg_mode, config=actor_config,
            )
            entropy_loss = agg_loss(loss_mat=entropy, loss_mask=mask, loss_agg_mode=spec.loss_agg_mode,
                                    **actor_config.global_batch_info)
            # without an entropy bonus the backward pass skips the entropy's graph (a vocabulary-wide softmax)
            loss = pg_loss - spec.entropy_coeff * entropy_loss if spec.entropy_coeff else pg_loss
            if ref_log_probs is not None:
                kld = kl_penalty(logprob=log_probs, ref_logprob=ref_log_probs[rows], kl_penalty=spec.kl_type)
                kl_loss = agg_loss(loss_mat=kld, loss_mask=mask, loss_agg_mode=spec.loss_agg_mode,
                                   **actor_config.global_batch_info)
                loss = loss + spec.kl_coef * kl_loss
                collected["actor/kl_loss"].append(kl_loss.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            if torch.isfinite(grad_norm):  # verl skips the step on a non-finite gradient
                optimizer.step()
            for name, value in pg_metrics.items():
                collected[name].append(value)
            collected["actor/pg_loss"].append(pg_loss.item())
            collected["actor/entropy"].append(entropy_loss.item())
            collected["actor/grad_norm"].append(grad_norm.item())
            collected["actor/loss"].append(loss.item())
    metrics = {name: float(np.mean(values)) for name, values in collected.items()}
    metrics["actor/lr"] = optimizer.param_groups[0]["lr"]
    if ref_log_probs is not None:
        metrics["actor/kl_coef"] = spec.kl_coef
    return metrics


def _as_data_proto(rollout: Rollout, token_scores, advantages, returns, max_new: int) -> DataProto:
    """The batch layout verl's compute_data_metrics reads; responses padded to the length limit for clip_ratio."""
    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, max_new - t.shape[1]))

    response_mask = pad(rollout.response_mask.long())
    return DataProto.from_dict(tensors={
        "prompts": rollout.prompt_ids,
        "responses": pad(rollout.response_ids),
        "attention_mask": torch.cat([rollout.prompt_mask.long(), response_mask], dim=-1),
        "response_mask": response_mask,
        "token_level_scores": pad(token_scores),
        "token_level_rewards": pad(token_scores),
        "advantages": pad(advantages),
        "returns": pad(returns),
    })


def behaviour_metrics(texts: list[str], results: list[RewardResult], lengths: torch.Tensor, group_size: int) -> dict:
    lengths = lengths.float().cpu().numpy()
    acc = np.array([r.acc for r in results])
    scores = np.array([r.score for r in results]).reshape(-1, group_size)
    metrics = {
        "behaviour/repetition_ratio": float(np.mean([r.repeated for r in results])),
        "behaviour/boxed_first_ratio": float(np.mean([boxed_first(t) for t in texts])),
        "behaviour/format_error_ratio": float(np.mean([not r.format_ok for r in results])),
        "behaviour/reflection_rate": float(np.mean([has_reflection(t) for t in texts])),
        "behaviour/accuracy": float(acc.mean()),
        "probe/uniform_group_ratio": float(np.mean(scores.std(axis=1) == 0)),
    }
    # absent rather than NaN when no response is correct (or none wrong)
    if acc.any():
        metrics["behaviour/correct_length_mean"] = float(lengths[acc].mean())
    if (~acc).any():
        metrics["behaviour/wrong_length_mean"] = float(lengths[~acc].mean())
    return metrics


def _frozen_copy(checkpoint: Path, device: str):
    reference = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(device).eval()
    reference.requires_grad_(False)
    return reference


# ---------------------------------------------------------------- evaluation and profile


def generate(model, prompter: Prompter, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
             generator: torch.Generator) -> tuple[list[str], list[int], list[bool]]:
    """Texts, token lengths and stop flags for many prompts, in sampler batches."""
    texts, lengths, finished = [], [], []
    for start in range(0, len(prompts), GENERATION_BATCH):
        rollout = sample(model, prompts[start : start + GENERATION_BATCH], max_new_tokens=max_new_tokens,
                         stop_ids=prompter.stop_ids, pad_id=prompter.pad_id, temperature=temperature,
                         top_p=prompter.spec.top_p, generator=generator, dtype=_compute_dtype(prompter.spec))
        texts += prompter.decode(rollout)
        lengths += rollout.response_lengths.tolist()
        finished += rollout.finished.tolist()
    return texts, lengths, finished


def evaluate(model, prompter: Prompter, problems: list[dict], spec: ProbeSpec, seed: int, step: int,
             out_dir: Path) -> dict:
    """val-core/<data_source>/{acc,reward}/mean@N on the eval set (N = eval_samples at eval_temperature),
    and with eval_sampled = k, at the first and last eval, mean@k at the probe's temperature;
    writes rollouts/step_<N>.jsonl (the sampled rows with split "eval-sampled")."""
    passes = [("eval", spec.eval_samples, spec.eval_temperature)]
    if spec.eval_sampled and step in (0, spec.steps):
        passes.append(("eval-sampled", spec.eval_sampled, spec.temperature))
    rows, metrics = [], {}
    for split, n, temperature in passes:
        pass_rows, pass_metrics = _eval_pass(model, prompter, problems, spec, step, n, temperature,
                                             _generator(seed, step, split, model.device))
        rows += [{**row, "split": split} for row in pass_rows]
        metrics.update(pass_metrics)
    _write_jsonl(out_dir / "rollouts" / f"step_{step}.jsonl", rows)
    return metrics


def _eval_pass(model, prompter: Prompter, problems: list[dict], spec: ProbeSpec, step: int, n: int,
               temperature: float, generator: torch.Generator) -> tuple[list[dict], dict]:
    """n responses per problem: their rows, and val-core/val-aux metrics per data source as mean@n."""
    repeated = [p for p in problems for _ in range(n)]
    prompt_texts = [prompter.render(p) for p in repeated]
    texts, lengths, finished = generate(
        model, prompter, [prompter.encode(t) for t in prompt_texts], max_new_tokens=spec.response_length_at(step),
        temperature=temperature, generator=generator,
    )
    by_source = defaultdict(lambda: defaultdict(list))
    rows = []
    for problem, prompt, text, length, done in zip(repeated, prompt_texts, texts, lengths, finished):
        result = score_held_out(text, problem["answer"], spec.reward_variant)
        source = problem["data_source"]
        by_source[source]["acc"].append(float(result.acc))
        by_source[source]["reward"].append(result.score)
        by_source[source]["response_length"].append(length)
        rows.append({"step": step, "id": problem["id"], "data_source": source, "prompt": prompt, "response": text,
                     "reward": result.score, "acc": result.acc, "pred": result.pred, "length": length,
                     "finished": done})
    metrics = {}
    for source, values in sorted(by_source.items()):
        metrics[f"val-core/{source}/acc/mean@{n}"] = float(np.mean(values["acc"]))
        metrics[f"val-core/{source}/reward/mean@{n}"] = float(np.mean(values["reward"]))
        metrics[f"val-aux/{source}/response_length/mean@{n}"] = float(np.mean(values["response_length"]))
    return rows, metrics


def write_completions(out_dir: Path, per_step: int = COMPLETIONS_PER_STEP) -> None:
    """completions.jsonl: the first `per_step` held-out answers (the same problems) at the first
    and the last eval, with their rewards: what the model writes before and after RL, small enough
    to keep whatever happens to the full rollouts."""
    steps = sorted(int(path.stem.split("_")[1]) for path in (out_dir / "rollouts").glob("step_*.jsonl"))
    rows = []
    for step in dict.fromkeys((steps[0], steps[-1])):
        rows_at_step = read_jsonl(out_dir / "rollouts" / f"step_{step}.jsonl")
        answers = [r for r in rows_at_step if r.get("split", "eval") == "eval"]
        rows += [{key: row.get(key) for key in ("step", "id", "prompt", "response", "reward", "acc", "pred")}
                 for row in answers[:per_step]]
    _write_jsonl(out_dir / COMPLETIONS_FILE, rows)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def profile_problems(train: list[dict], spec: ProbeSpec, seed: int) -> list[dict]:
    """The probe problems the step-0 pass@k profile samples (both engines)."""
    rng = np.random.default_rng(_stream_seed(seed, 0, "profile"))
    return [train[i] for i in rng.choice(len(train), min(spec.profile_problems, len(train)), replace=False)]


def pass_at_k_profile(correct_per_problem: list[int], n: int, spec: ProbeSpec) -> dict:
    """profile.json's pass@k part: unbiased pass@k at the spec's ks from n samples per problem."""
    return {
        "spec": spec.name,
        "spec_hash": spec.content_hash(),
        "pass_at_k": {str(k): float(np.mean([pass_at_k(n, int(c), k) for c in correct_per_problem]))
                      for k in spec.passk_ks},
        "pass_at_k_problems": len(correct_per_problem),
        "pass_at_k_samples": n,
    }


def base_profile(model, prompter: Prompter, train: list[dict], evals: list[dict], spec: ProbeSpec,
                 seed: int) -> dict:
    """Step-0 profile: pass@k on probe (train-split) problems and greedy few-shot accuracy on the eval split
    (none at fewshot_k 0: 0-shot accuracy is the step-0 evaluation's, and repeating it cost SmolLM2's
    probe about 55 s)."""
    chosen = profile_problems(train, spec, seed)
    n = spec.passk_samples
    repeated = [p for p in chosen for _ in range(n)]
    texts, _, _ = generate(model, prompter, [prompter.prompt_ids(p) for p in repeated],
                           max_new_tokens=spec.response_length_at(0), temperature=spec.temperature,
                           generator=_generator(seed, 0, "passk", model.device))
    correct = np.array([score_held_out(t, p["answer"], spec.reward_variant).acc for t, p in zip(texts, repeated)])
    profile = pass_at_k_profile(correct.reshape(len(chosen), n).sum(axis=1).tolist(), n, spec)
    if spec.fewshot_k:
        profile["fewshot"] = fewshot_accuracy(model, prompter, train, evals, spec, seed)
    return profile


def fewshot_accuracy(model, prompter: Prompter, train: list[dict], evals: list[dict], spec: ProbeSpec,
                     seed: int) -> dict:
    """Greedy accuracy with fewshot_k solved examples (the template, then the boxed answer) from the train split."""
    rng = np.random.default_rng(_stream_seed(seed, 0, "fewshot"))
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    max_new = spec.response_length_at(0)
    prompts = []
    for problem in evals:
        shots = [train[i] for i in rng.choice(len(train), min(spec.fewshot_k, len(train)), replace=False)]
        while True:  # drop examples until the prompt and the answer fit the model's context
            ids = prompter.encode(prompter.render(problem, shots))
            if len(ids) + max_new <= limit or not shots:
                break
            shots = shots[:-1]
        prompts.append(ids)
    texts, _, _ = generate(model, prompter, prompts, max_new_tokens=max_new, temperature=0.0,
                           generator=_generator(seed, 0, "fewshot-decode", model.device))
    by_source = defaultdict(list)
    for problem, text in zip(evals, texts):
        answer = text.split(prompter.fewshot_stop, 1)[0] if prompter.fewshot_stop else text
        result = score_held_out(answer, problem["answer"], spec.reward_variant)
        by_source[problem["data_source"]].append(float(result.acc))
    return {
        "k": spec.fewshot_k,
        "acc": float(np.mean([a for values in by_source.values() for a in values])) if evals else 0.0,
        "acc_by_source": {s: float(np.mean(v)) for s, v in sorted(by_source.items())},
    }


# ---------------------------------------------------------------- state, logs


class CheckpointState:
    """Policy + optimizer + step under state/step_<N>.pt, written to a temp file and renamed into place."""

    def __init__(self, state_dir: Path, spec: ProbeSpec, seed: int) -> None:
        self.dir = state_dir
        self.spec_hash = spec.content_hash()
        self.seed = seed
        self.dir.mkdir(parents=True, exist_ok=True)

    def _checkpoints(self) -> list[Path]:
        return sorted(self.dir.glob("step_*.pt"))

    def restore(self, model, optimizer) -> int:
        checkpoints = self._checkpoints()
        if not checkpoints:
            return 0
        state = torch.load(checkpoints[-1], weights_only=False)
        if state["spec_hash"] != self.spec_hash or state["seed"] != self.seed:
            raise ValueError(f"{self.dir} holds a probe with another spec or seed; use a fresh out_dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return state["step"]

    def drop(self) -> None:
        """A finished probe needs no resume state."""
        shutil.rmtree(self.dir)

    def save(self, step: int, model, optimizer) -> None:
        final = self.dir / f"step_{step:06d}.pt"
        tmp = self.dir / f".{final.name}.tmp"
        torch.save({"step": step, "spec_hash": self.spec_hash, "seed": self.seed,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
        replace_durably(tmp, final)
        for older in self._checkpoints():
            if older != final:
                older.unlink()


class MetricsLog:
    """metrics.jsonl in verl's file-logger format; on resume, drops lines logged after the checkpoint."""

    def __init__(self, path: Path, keep_through_step: int, on_metrics: MetricsCallback | None) -> None:
        self.path = path
        self.on_metrics = on_metrics
        keep_metrics_through(path, keep_through_step or -1)  # a fresh start keeps nothing, step 0 included

    def write(self, step: int, data: dict) -> None:
        append_metrics(self.path, step, data)
        if self.on_metrics is not None:
            self.on_metrics(step, data)


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))
