"""Rollout throughput: our sampler vs HF `generate` on the same weights and prompts.

Tokens/s counts response tokens up to and including EOS, at batch 64,
temperature 1, at most 64 new tokens, prompts of 12-36 tokens left-padded
(every engine gets the same padded batch and mask, the same stop id and the
same thread count). Two workloads:
- `ragged` (the headline): the EOS logit is raised along one hidden direction
  so that rows stop at very different times (median ~15 tokens, a third
  clipped at 64), the shape of RL rollouts where a few responses loop to
  the length limit; every engine stops when all rows have stopped;
- `fixed`: the stop id is one no row can sample, so every row runs the full
  64 tokens, which compares the per-step machinery alone.

HF generate runs with its KV cache both as the default dynamic cache and as
its static cache (the one meant for fixed-shape decoding); the peer is the
faster of the two in this run. Everything runs on one thread and rates are
tokens per CPU-second of this process, medians over repeats: on a shared
machine wall-clock time mostly measures the neighbours (wall-clock rates are
reported alongside). The engines' repeats are interleaved so that what load
remains (caches, memory bandwidth) hits all of them alike.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rl_probe.sampler import left_pad, sample

EOS_ID = 511
HF_CACHES = ("dynamic", "static")


def toy_llama(vocab_size: int = 512, seed: int = 0, eos_strength: float = 3.0) -> LlamaForCausalLM:
    """The toy-world model shape (~0.85M parameters), random weights with an EOS that gets sampled."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=EOS_ID, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[EOS_ID] = 0.0
        model.model.embed_tokens.weight[EOS_ID, :8] = eos_strength
    return model


def response_tokens(responses: torch.Tensor, stop_id: int) -> int:
    """Tokens of right-padded responses up to and including each row's first `stop_id`."""
    is_stop = responses == stop_id
    first_stop = torch.where(is_stop.any(-1), is_stop.int().argmax(-1) + 1, responses.shape[1])
    return int(first_stop.sum())


def measure(model: LlamaForCausalLM, stop_id: int, batch: int, new_tokens: int,
            repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median tokens per CPU-second and per wall-clock second of each engine ("ours", "hf-<cache>")."""
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, EOS_ID, (int(n),), generator=gen).tolist()
               for n in torch.randint(12, 37, (batch,), generator=gen)]
    padded, mask = left_pad(prompts, pad_id=0)

    def ours() -> int:
        rollout = sample(model, prompts, max_new_tokens=new_tokens, stop_ids=[stop_id], pad_id=0,
                         temperature=1.0, generator=torch.Generator().manual_seed(1))
        return int(rollout.response_lengths.sum())

    def hf_generate(cache: str):
        @torch.inference_mode()
        def run() -> int:
            torch.manual_seed(1)
            out = model.generate(padded, attention_mask=mask.long(), do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=new_tokens, eos_token_id=stop_id, pad_token_id=0,
                                 use_cache=True, cache_implementation=cache)
            return response_tokens(out[:, padded.shape[1]:], stop_id)

        return run

    engines = {"ours": ours, **{f"hf-{cache}": hf_generate(cache) for cache in HF_CACHES}}
    for run in engines.values():
        run()  # warm-up
    cpu_rates: dict[str, list[float]] = {name: [] for name in engines}
    wall_rates: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, run in engines.items():
            cpu_started, wall_started = time.process_time(), time.perf_counter()
            tokens = run()
            cpu_rates[name].append(tokens / (time.process_time() - cpu_started))
            wall_rates[name].append(tokens / (time.perf_counter() - wall_started))
    return ({name: statistics.median(r) for name, r in cpu_rates.items()},
            {name: statistics.median(r) for name, r in wall_rates.items()})


def bench_rollout_throughput(batch: int = 64, new_tokens: int = 64, repeats: int = 5, threads: int = 1) -> dict:
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = toy_llama()
        ragged, ragged_wall = measure(model, EOS_ID, batch, new_tokens, repeats)
        # vocab_size is an id no row can sample
        fixed, fixed_wall = measure(model, model.config.vocab_size, batch, new_tokens, repeats)
    finally:
        torch.set_num_threads(previous_threads)
    ragged_peer = max(ragged[f"hf-{c}"] for c in HF_CACHES)
    fixed_peer = max(fixed[f"hf-{c}"] for c in HF_CACHES)

    def wall_ratio(wall: dict[str, float]) -> float:
        return round(wall["ours"] / max(wall[f"hf-{c}"] for c in HF_CACHES), 2)
    return {
        "ours": ragged["ours"],
        "peer": ragged_peer,
        "unit": "tok/cpu-s",
        "peer_name": "hf-generate",
        "details": {
            "workload": f"batch {batch}, <= {new_tokens} new tokens, ragged EOS; peer = faster HF cache",
            **{f"ragged_{name}_tok_per_cpu_s": round(rate) for name, rate in ragged.items()},
            "ragged_ratio": round(ragged["ours"] / ragged_peer, 2),
            "ragged_wall_clock_ratio": wall_ratio(ragged_wall),
            **{f"fixed_length_{name}_tok_per_cpu_s": round(rate) for name, rate in fixed.items()},
            "fixed_length_ratio": round(fixed["ours"] / fixed_peer, 2),
            "fixed_length_wall_clock_ratio": wall_ratio(fixed_wall),
            "threads": threads,
            "repeats": repeats,
            "params": sum(p.numel() for p in model.parameters()),
        },
    }


if __name__ == "__main__":
    print(bench_rollout_throughput())
