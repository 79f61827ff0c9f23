"""Rollout throughput: our sampler vs HF `generate` on the same weights and prompts.

Tokens/s counts response tokens up to and including EOS, at batch 64,
temperature 1, at most 64 new tokens, prompts of 12-36 tokens left-padded
(both engines get the same padded batch and mask). Two workloads:
- `ragged` (the headline): the EOS logit is raised along one hidden direction
  so that rows stop at very different times (median ~15 tokens, a third
  clipped at 64), the shape of RL rollouts where a few responses loop to
  the length limit;
- `fixed`: no row can stop, which compares the per-step machinery alone.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rl_probe.sampler import left_pad, sample

EOS_ID = 511


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


def _response_tokens(responses: torch.Tensor, eos_id: int | None) -> int:
    if eos_id is None:
        return responses.numel()
    is_eos = responses == eos_id
    first_eos = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, responses.shape[1])
    return int(first_eos.sum())


def _median_rate(run, repeats: int) -> float:
    run()  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        tokens = run()
        rates.append(tokens / (time.perf_counter() - started))
    return statistics.median(rates)


def measure(model: LlamaForCausalLM, eos_id: int | None, batch: int, new_tokens: int,
            repeats: int) -> tuple[float, float]:
    """(ours, hf generate) tokens/s on one workload."""
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, EOS_ID, (int(n),), generator=gen).tolist()
               for n in torch.randint(12, 37, (batch,), generator=gen)]
    padded, mask = left_pad(prompts, pad_id=0)
    stop = eos_id if eos_id is not None else model.config.vocab_size  # an id that is never sampled

    def ours() -> int:
        rollout = sample(model, prompts, max_new_tokens=new_tokens, eos_id=stop, pad_id=0,
                         temperature=1.0, generator=torch.Generator().manual_seed(1))
        return int(rollout.response_lengths.sum())

    @torch.no_grad()
    def hf_generate() -> int:
        torch.manual_seed(1)
        out = model.generate(padded, attention_mask=mask.long(), do_sample=True, temperature=1.0,
                             top_k=0, top_p=1.0, max_new_tokens=new_tokens, eos_token_id=eos_id, pad_token_id=0,
                             min_new_tokens=new_tokens if eos_id is None else 0)
        return _response_tokens(out[:, padded.shape[1]:], eos_id)

    return _median_rate(ours, repeats), _median_rate(hf_generate, repeats)


def bench_rollout_throughput(batch: int = 64, new_tokens: int = 64, repeats: int = 3) -> dict:
    model = toy_llama()
    ragged = measure(model, EOS_ID, batch, new_tokens, repeats)
    fixed = measure(model, None, batch, new_tokens, repeats)
    return {
        "ours": ragged[0],
        "peer": ragged[1],
        "unit": "tok/s",
        "peer_name": "hf-generate",
        "details": {
            "workload": f"batch {batch}, <= {new_tokens} new tokens, ragged EOS",
            "fixed_length_ours_tok_s": round(fixed[0]),
            "fixed_length_hf_tok_s": round(fixed[1]),
            "fixed_length_ratio": round(fixed[0] / fixed[1], 2),
            "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in model.parameters()),
        },
    }


if __name__ == "__main__":
    print(bench_rollout_throughput())
