"""Training throughput of the megatron-core path against a plain HF Llama loop."""

from __future__ import annotations

import statistics
import time

import torch
from megatron.core import parallel_state

from midtrain.convert import megatron_to_hf, megatron_weights
from midtrain.model import build_gpt_model, init_distributed, seed_all
from midtrain.spec import ModelSpec, preset
from midtrain.config import TrainConfig
from midtrain.optim import accumulate_gradients, make_optimizer


def matmul_peak_flops(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """Best fp32 GEMM rate measured on this machine with `threads` threads (FLOP/s)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops_per_token(spec: ModelSpec, seq_length: int) -> float:
    """Forward + backward matmul FLOPs per token (PaLM appendix B: 6N + 12·L·h·s),
    with N the matmul parameters: all layers plus the output projection."""
    n = spec.num_parameters() - spec.vocab_size * spec.hidden_size * (
        1 if spec.tie_embeddings else 2) + spec.vocab_size * spec.hidden_size
    return 6 * n + 12 * spec.num_layers * spec.hidden_size * seq_length


def bench_training_throughput(spec: ModelSpec | None = None, seq_length: int = 256,
                              micro_batch_size: int = 8, steps: int = 8,
                              threads: int = 1) -> dict:
    """Median tokens/s of full training steps (fwd, bwd, clip, AdamW) for megatron-core
    GPTModel as `midtrain.train` runs it ("ours") and for transformers'
    LlamaForCausalLM ("peer"), from identical weights on identical batches, steps
    interleaved so machine load affects both alike. Returns the bench-suite dict."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = spec or preset("toy-s")
    torch.set_num_threads(threads)
    init_distributed()
    seed_all(0)
    cfg = TrainConfig(tokens=1, lr=1e-3)
    megatron = build_gpt_model(spec)
    hf = LlamaForCausalLM(LlamaConfig(**spec.to_hf_config()))
    hf.load_state_dict(megatron_to_hf(megatron_weights(megatron), spec), strict=False)
    runs = {}
    for name, model in (("megatron", megatron), ("hf", hf)):
        params = list(model.parameters())
        runs[name] = {"model": model, "params": params, "opt": make_optimizer(model, cfg),
                      "times": [], "cpu_times": [], "losses": []}

    def megatron_step(run, batch):
        return accumulate_gradients(run["model"], [batch], run["params"],
                                    parallel_state.get_data_parallel_group())

    def hf_step(run, batch):
        tokens, labels, _ = batch
        logits = run["model"](input_ids=tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        loss.backward()
        return loss.item()

    generator = torch.Generator().manual_seed(0)
    for _ in range(steps + 1):  # the first step warms allocators up and is not timed
        text = torch.randint(0, spec.vocab_size, (micro_batch_size, seq_length + 1),
                             generator=generator)
        batch = (text[:, :-1], text[:, 1:], torch.ones(micro_batch_size, seq_length))
        for name, step in (("megatron", megatron_step), ("hf", hf_step)):
            run = runs[name]
            start, cpu_start = time.perf_counter(), time.process_time()
            run["losses"].append(step(run, batch))
            torch.nn.utils.clip_grad_norm_(run["params"], 1.0)
            run["opt"].step()
            run["opt"].zero_grad(set_to_none=True)
            run["times"].append(time.perf_counter() - start)
            run["cpu_times"].append(time.process_time() - cpu_start)

    tokens_per_step = micro_batch_size * seq_length
    peak = matmul_peak_flops(threads)
    flops_per_token = training_flops_per_token(spec, seq_length)
    tokens_per_s = {name: tokens_per_step / statistics.median(run["times"][1:])
                    for name, run in runs.items()}
    # On a shared machine wall time also counts waiting for a core; CPU time does not
    # (threads=1), so its ratio is the steadier comparison of the two loops' work.
    cpu_seconds = {name: statistics.median(run["cpu_times"][1:]) for name, run in runs.items()}
    return {
        "ours": tokens_per_s["megatron"],
        "peer": tokens_per_s["hf"],
        "unit": "tokens/s",
        "peer_name": "hf-llama-adamw-loop",
        "details": {
            "model": f"{spec.num_parameters() / 1e6:.2f}M params, vocab {spec.vocab_size}",
            "threads": threads,
            "tokens_per_step": tokens_per_step,
            "peak_fp32_matmul_gflops": round(peak / 1e9, 1),
            "mfu_megatron": round(tokens_per_s["megatron"] * flops_per_token / peak, 3),
            "mfu_hf": round(tokens_per_s["hf"] * flops_per_token / peak, 3),
            "cpu_time_ratio_hf_over_megatron": round(
                cpu_seconds["hf"] / cpu_seconds["megatron"], 3),
            "first_step_loss_diff": abs(runs["megatron"]["losses"][0] - runs["hf"]["losses"][0]),
        },
    }
