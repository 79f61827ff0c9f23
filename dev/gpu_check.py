"""The one-GPU check of midprobe's CUDA path: `python dev/gpu_check.py` (or `make gpu-check`).

Needs one GPU, Python 3.12, a CUDA build of torch and transformers, and the wheels in
dev/gpu_check_wheels.md. Runs in a few minutes (toy-xs, a few steps per run) and prints
one line per check (PASS / FAIL / SKIP); exits 1 if any check fails.

1. Mid-training on CUDA in fp32 with torch's AdamW follows the same steps on CPU.
2. Mid-training on CUDA in bf16 with megatron's DDP + DistributedOptimizer (the default
   on a GPU; TransformerEngine layers when TE is installed, local layers otherwise)
   follows the CPU steps within bf16 rounding.
3. The HF export of the CUDA run loads with transformers on CUDA and gives the CPU's
   log-probs; the bf16 run's export gives the CPU run's loss within bf16 rounding.
4. The embedded probe's GRPO update (verl's policy loss, teacher-forced log-probs,
   AdamW) for a few steps on CUDA follows the same updates on CPU. Needs verl, whose
   import pulls in ray (a 79 MB wheel), so it is SKIPPED where verl is not installed.
   The rollout is sampled on CPU and the updates replay it on each device.
5. A whole probe step (sampling, reward, update) on CUDA, fp32 and bf16: finite, and the
   sampler's log-probs on CUDA equal the training forward's on CUDA (what bypass mode
   relies on); greedy sampling on CUDA gives the CPU's tokens and log-probs (needs verl too).

Without CUDA, or with --dry-run, the CPU side runs (plus megatron's distributed
optimizer on CPU against torch's AdamW) and every CUDA check prints SKIP.

Every training run is its own `python -m midtrain.train` process (CPU runs with
CUDA_VISIBLE_DEVICES="" so the same machine runs both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from midtrain.data import BlendPart  # noqa: E402
from midtrain.spec import preset  # noqa: E402
from midtrain.train import TrainConfig, TrainJob  # noqa: E402
from pipelines.store import accelerator  # noqa: E402

STEPS = 6
# fp32 GEMMs and reductions differ between CPU and GPU in the last bits; six steps of
# AdamW keep that below 1e-4 relative. bf16 weights round to 3 significant digits.
FP32_LOSS_RTOL = 1e-3
BF16_LOSS_RTOL = 3e-2
LOGPROB_ATOL = 1e-3
# bf16 sampling (its own kernels) against the autocast training forward: ~3 significant digits
BF16_LOGPROB_ATOL = 0.1
PROBE_UPDATES = 3


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def line(self, status: str, name: str, detail: str) -> None:
        self.failed += status == "FAIL"
        print(f"{status:4} {name}: {detail}", flush=True)

    def attempt(self, name: str, run):
        """run(), or a FAIL line with the last line of its error and None, so that one
        failing training run does not hide what the other checks would show."""
        try:
            return run()
        except RuntimeError as exc:
            print(exc, flush=True)
            self.line("FAIL", name, str(exc).strip().splitlines()[-1])
            return None

    def compare(self, name: str, got: list[float], expected: list[float], rtol: float,
                what: str) -> None:
        worst = max(abs(g - e) / abs(e) for g, e in zip(got, expected))
        ok = len(got) == len(expected) and worst <= rtol and all(np.isfinite(got))
        self.line("PASS" if ok else "FAIL", name,
                  f"{what}: max relative difference {worst:.2e} over {len(got)} values "
                  f"(tolerance {rtol:g})")


def build_corpus(root: Path) -> tuple[Path, list[BlendPart]]:
    """Toy-world web documents, a BPE trained on them, and the Megatron .bin/.idx."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from transformers import AutoTokenizer

    from data_recipes.tokenizer import train_tokenizer
    from data_recipes.toyworld import ToyWorld, ToyWorldConfig

    texts = [d["text"] for d in ToyWorld(ToyWorldConfig()).documents("web", 400, seed=0)]
    tokenizer_dir = train_tokenizer(texts, 512, root / "tokenizer")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    builder = IndexedDatasetBuilder(str(root / "web.bin"), dtype=np.int32)
    for text in texts:
        builder.add_item(torch.tensor(tok(text)["input_ids"] + [tok.eos_token_id]))
        builder.end_document()
    builder.finalize(str(root / "web.idx"))
    return tokenizer_dir, [BlendPart(name="web", prefixes=[str(root / "web")], weight=1.0)]


def toy_spec(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return preset("toy-xs", vocab_size=len(AutoTokenizer.from_pretrained(tokenizer_dir)))


def export_random_init(tokenizer_dir: str, out_dir: str) -> None:
    """A seeded random toy-xs, built on the CPU and exported as an HF dir. Every run of the
    check starts from it: megatron draws a GPU run's initial weights from the CUDA generator,
    so runs initialised on each device would differ before their first step."""
    from midtrain.convert import export_hf
    from midtrain.model import build_gpt_model, init_distributed, seed_all

    init_distributed()
    seed_all(0)
    spec = toy_spec(Path(tokenizer_dir))
    export_hf(build_gpt_model(spec), spec, tokenizer_dir, out_dir)


def cpu_env() -> dict:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def build_init(root: Path, tokenizer_dir: Path) -> Path:
    init = root / "init"
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'dev')!r}); import gpu_check; "
            f"gpu_check.export_random_init({str(tokenizer_dir)!r}, {str(init)!r})")
    subprocess.run([sys.executable, "-c", code], env=cpu_env(), check=True, timeout=600)
    return init


def train_run(root: Path, name: str, tokenizer_dir: Path, blend, cuda: bool, init: Path,
              **settings) -> dict:
    """One `python -m midtrain.train` process from `init`; returns its summary and losses."""
    cfg = TrainConfig(tokens=STEPS * 4 * 128, seq_length=128, micro_batch_size=4, lr=3e-3,
                      min_lr=3e-4, schedule="constant", eval_every_steps=STEPS,
                      eval_tokens=1024, checkpoint_every_tokens=None, **settings)
    job = TrainJob(model=toy_spec(tokenizer_dir), config=cfg, blend=blend,
                   out_dir=root / name, tokenizer_dir=tokenizer_dir, init=init)
    job_file = root / f"{name}.json"
    job_file.write_text(job.model_dump_json())
    env = cpu_env()
    if cuda:
        del env["CUDA_VISIBLE_DEVICES"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "midtrain.train", str(job_file)], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: midtrain.train exited {done.returncode}:\n"
                           + done.stderr[-3000:])
    metrics = [json.loads(line) for line in (root / name / "metrics.jsonl").open()]
    summary = json.loads((root / name / "summary.json").read_text())
    return {"losses": [m["data"]["train/loss"] for m in metrics], "summary": summary,
            "hf": root / name / "hf", "seconds": time.perf_counter() - started}


def text_log_probs(hf_dir: Path, text: str, device: str) -> torch.Tensor:
    """Per-token log-probs of `text` under an HF export, in fp32 on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(hf_dir)(text, return_tensors="pt")["input_ids"].to(device)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[0, :, 0].cpu()


def probe_updates(hf_dir: Path, devices: list[str]) -> dict[str, dict]:
    """The embedded probe's GRPO update, PROBE_UPDATES times on one rollout sampled on
    CPU, on each device from the same weights: per-update losses and final log-probs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    from data_recipes.toyworld import ToyWorld, ToyWorldConfig
    from rl_probe.embedded import Prompter, _actor_config, _update, make_optimizer
    from rl_probe.reward import score
    from rl_probe.sampler import Rollout, sample, teacher_forced
    from rl_probe.spec import get_probe_spec

    spec = get_probe_spec("toy-cpu-v5")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    prompter = Prompter(tokenizer, spec)
    problems = [{"id": p.id, "question": p.question, "answer": p.answer}
                for p in ToyWorld(ToyWorldConfig()).problems("train", 4)]
    grouped = [p for p in problems for _ in range(spec.group_size)]
    cpu_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    rollout = sample(cpu_model, [prompter.prompt_ids(p) for p in grouped],
                     max_new_tokens=32, stop_ids=prompter.stop_ids, pad_id=prompter.pad_id,
                     temperature=spec.temperature, top_p=spec.top_p,
                     generator=torch.Generator().manual_seed(0))
    texts = prompter.decode(rollout)
    scores = [score(t, p["answer"], spec.reward_variant).score for t, p in zip(texts, grouped)]
    mask, lengths = rollout.response_mask, rollout.response_lengths
    token_scores = torch.zeros(mask.shape)
    token_scores[torch.arange(len(scores)), lengths - 1] = torch.tensor(scores, dtype=torch.float)
    advantages, _ = get_adv_estimator_fn(spec.adv_estimator)(
        token_level_rewards=token_scores, response_mask=mask,
        index=np.array([p["id"] for p in grouped], dtype=object),
        norm_adv_by_std_in_grpo=spec.norm_adv_by_std)
    out = {}
    for device in devices:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device)
        optimizer = make_optimizer(model, spec)
        on_device = Rollout(**{k: getattr(rollout, k).to(device)
                               for k in Rollout.__dataclass_fields__})
        losses = []
        for _ in range(PROBE_UPDATES):
            metrics = _update(model, optimizer, spec, _actor_config(spec), on_device,
                              on_device.log_probs, None, advantages.to(device))
            losses += [metrics["actor/pg_loss"], metrics["actor/grad_norm"]]
        with torch.no_grad():
            log_probs, _ = teacher_forced(model, on_device.prompt_ids, on_device.prompt_mask,
                                          on_device.response_ids, on_device.response_mask,
                                          spec.temperature)
        out[device] = {"losses": losses, "log_probs": log_probs[on_device.response_mask].cpu()}
    return out


def probe_steps(hf_dir: Path, device: str) -> dict:
    """One embedded probe step per compute dtype on `device`, and greedy samples there:
    metrics, the sampler's vs the training forward's log-probs, greedy tokens and log-probs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_recipes.toyworld import ToyWorld, ToyWorldConfig
    from rl_probe.embedded import Prompter, _actor_config, grpo_step, make_optimizer
    from rl_probe.sampler import sample, teacher_forced
    from rl_probe.spec import get_probe_spec

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    problems = [{"id": p.id, "question": p.question, "answer": p.answer}
                for p in ToyWorld(ToyWorldConfig()).problems("train", 16)]
    out = {}
    for dtype in ("float32", "bfloat16"):
        spec = get_probe_spec("toy-cpu-v5").model_copy(update={"dtype": dtype})
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device)
        prompter = Prompter(tokenizer, spec)
        optimizer = make_optimizer(model, spec)
        metrics = grpo_step(model, None, optimizer, prompter, problems, spec, 0, 1, _actor_config(spec))
        rollout = sample(model, [prompter.prompt_ids(p) for p in problems[:8]], max_new_tokens=24,
                         stop_ids=prompter.stop_ids, pad_id=prompter.pad_id, temperature=1.0,
                         generator=torch.Generator(device=device).manual_seed(0), dtype=getattr(torch, dtype))
        with torch.no_grad():
            forced, _ = teacher_forced(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                       rollout.response_mask, 1.0, dtype=getattr(torch, dtype))
        gap = ((forced - rollout.log_probs) * rollout.response_mask).abs().max().item()
        out[dtype] = {"finite": all(np.isfinite(v) for v in metrics.values() if isinstance(v, float)),
                      "sampler_vs_forward": gap}
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device)
    greedy = sample(model, [prompter.prompt_ids(p) for p in problems], max_new_tokens=24,
                    stop_ids=prompter.stop_ids, pad_id=prompter.pad_id, temperature=0.0,
                    generator=torch.Generator(device=device))
    out["greedy"] = {"tokens": greedy.response_ids.cpu(), "log_probs": greedy.log_probs.cpu()}
    return out


def verl_importable() -> str | None:
    """None, or why verl cannot be imported here."""
    try:
        import verl.trainer.ppo.core_algos  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="run the CPU side only; every CUDA check is skipped")
    parser.add_argument("--out", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    report = Report()
    started = time.perf_counter()
    if not cuda:
        why = "--dry-run" if args.dry_run else "no CUDA device"
        print(f"gpu-check: {why}: running the CPU side only; the CUDA checks are SKIPPED "
              "and prove nothing about the GPU path", flush=True)
    root = args.out or Path(tempfile.mkdtemp(prefix="midprobe-gpu-check-"))
    root.mkdir(parents=True, exist_ok=True)
    tokenizer_dir, blend = build_corpus(root)
    init = build_init(root, tokenizer_dir)

    cpu = train_run(root, "cpu-fp32-adamw", tokenizer_dir, blend, cuda=False, init=init,
                    optimizer="torch-adamw")
    report.line("PASS" if all(np.isfinite(cpu["losses"])) else "FAIL", "cpu-reference",
                f"{len(cpu['losses'])} steps on CPU, loss {cpu['losses'][0]:.3f} -> "
                f"{cpu['losses'][-1]:.3f} ({cpu['seconds']:.0f} s)")
    if cuda:
        gpu = report.attempt("cuda-fp32-torch-adamw", lambda: train_run(
            root, "cuda-fp32-adamw", tokenizer_dir, blend, cuda=True, init=init, optimizer="torch-adamw"))
        if gpu:
            report.compare("cuda-fp32-torch-adamw", gpu["losses"], cpu["losses"],
                           FP32_LOSS_RTOL, "training losses vs CPU")
        bf16 = report.attempt("cuda-bf16-megatron-distributed", lambda: train_run(
            root, "cuda-bf16-distributed", tokenizer_dir, blend, cuda=True, init=init, bf16=True))
        if bf16:
            from megatron.core.models.gpt.gpt_layer_specs import HAVE_TE

            layers = "TransformerEngine" if HAVE_TE else "local (no TransformerEngine)"
            ok = bf16["summary"]["optimizer"] == "megatron-distributed"
            report.line("PASS" if ok else "FAIL", "cuda-bf16-optimizer",
                        f"optimizer auto resolved to {bf16['summary']['optimizer']}, "
                        f"{layers} layers")
            report.compare("cuda-bf16-megatron-distributed", bf16["losses"], cpu["losses"],
                           BF16_LOSS_RTOL, "training losses vs CPU fp32")
        text = "Zoe has 23 shells. Each day she gives away 7. How many shells does Zoe have?"
        if gpu:
            on_gpu, on_cpu = (text_log_probs(gpu["hf"], text, d) for d in ("cuda", "cpu"))
            worst = (on_gpu - on_cpu).abs().max().item()
            report.line("PASS" if worst <= LOGPROB_ATOL else "FAIL", "hf-export-cuda",
                        f"transformers on CUDA vs CPU, same export: max |log-prob difference| "
                        f"{worst:.2e} (tolerance {LOGPROB_ATOL:g})")
        if bf16:
            bf16_nll = -text_log_probs(bf16["hf"], text, "cuda").mean().item()
            cpu_nll = -text_log_probs(cpu["hf"], text, "cpu").mean().item()
            report.compare("hf-export-bf16", [bf16_nll], [cpu_nll], BF16_LOSS_RTOL,
                           "loss of the bf16 run's export on CUDA vs the CPU run's on CPU")
    else:
        for name in ("cuda-fp32-torch-adamw", "cuda-bf16-megatron-distributed",
                     "hf-export-cuda", "hf-export-bf16"):
            report.line("SKIP", name, "needs CUDA")
        dist = train_run(root, "cpu-fp32-distributed", tokenizer_dir, blend, cuda=False, init=init,
                         optimizer="megatron-distributed")
        report.compare("cpu-megatron-distributed", dist["losses"], cpu["losses"], 1e-5,
                       "megatron DDP + DistributedOptimizer (fp32, CPU) vs torch AdamW")

    missing = verl_importable()
    if missing is not None:
        report.line("SKIP", "probe-update", f"verl is not importable ({missing}); its import "
                    "of core_algos needs ray (see dev/gpu_check_wheels.md)")
    else:
        devices = ["cpu", "cuda"] if cuda else ["cpu"]
        runs = probe_updates(cpu["hf"], devices)
        if cuda:
            report.compare("probe-update-cuda", runs["cuda"]["losses"], runs["cpu"]["losses"],
                           FP32_LOSS_RTOL, f"{PROBE_UPDATES} GRPO updates: policy loss and "
                           "grad norm vs CPU")
            worst = (runs["cuda"]["log_probs"] - runs["cpu"]["log_probs"]).abs().max().item()
            report.line("PASS" if worst <= LOGPROB_ATOL else "FAIL", "probe-log-probs-cuda",
                        f"after the updates: max |log-prob difference| {worst:.2e} "
                        f"(tolerance {LOGPROB_ATOL:g})")
        else:
            finite = all(np.isfinite(runs["cpu"]["losses"]))
            report.line("PASS" if finite else "FAIL", "probe-update-cpu",
                        f"{PROBE_UPDATES} GRPO updates on CPU, finite losses")
            report.line("SKIP", "probe-update-cuda", "needs CUDA")
        steps = {device: probe_steps(cpu["hf"], device) for device in devices}
        for device, by_dtype in steps.items():
            for dtype in ("float32", "bfloat16"):
                result = by_dtype[dtype]
                tolerance = LOGPROB_ATOL if dtype == "float32" else BF16_LOGPROB_ATOL
                ok = result["finite"] and result["sampler_vs_forward"] <= tolerance
                report.line("PASS" if ok else "FAIL", f"probe-step-{device}-{dtype}",
                            f"a probe step on {device}: finite metrics; sampler vs training forward "
                            f"max |log-prob difference| {result['sampler_vs_forward']:.2e} "
                            f"(tolerance {tolerance:g})")
        if cuda:
            on_gpu, on_cpu = steps["cuda"]["greedy"], steps["cpu"]["greedy"]
            # up to each row's first differing token (a near-tie may flip an argmax)
            agree = (on_gpu["tokens"] == on_cpu["tokens"]).int().cumprod(-1).bool()
            worst = ((on_gpu["log_probs"] - on_cpu["log_probs"]) * agree).abs().max().item()
            share = agree.float().mean().item()
            report.line("PASS" if worst <= LOGPROB_ATOL and share >= 0.9 else "FAIL", "probe-greedy-cuda",
                        f"greedy sampling on CUDA vs CPU: {share:.0%} of tokens agree, their max |log-prob "
                        f"difference| {worst:.2e} (tolerance {LOGPROB_ATOL:g})")
            recorded = accelerator()
            report.line("PASS" if recorded and recorded["name"] == torch.cuda.get_device_name() else "FAIL",
                        "manifest-accelerator", f"a stage manifest would record {recorded}")
    print(f"gpu-check: {report.failed} failed, {time.perf_counter() - started:.0f} s, "
          f"work directory {root}", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
