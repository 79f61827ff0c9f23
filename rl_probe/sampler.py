"""Batched sampling with a KV cache for Llama-style HF causal LMs.

The decoding loop is ours (not `model.generate`) so that the per-token
log-probs are exactly the policy's, `log_softmax(logits / temperature)` as
verl's actor computes them, and stopping is explicit. Prompts are
left-padded so every row decodes its next token at the same column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from verl.utils.torch_functional import entropy_from_logits


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P) left-padded with pad_id
    prompt_mask: torch.Tensor  # (B, P) bool, True on real prompt tokens
    response_ids: torch.Tensor  # (B, T) right-padded with pad_id after EOS / max length
    response_mask: torch.Tensor  # (B, T) bool, True on generated tokens (EOS included)
    log_probs: torch.Tensor  # (B, T) log p(token) under softmax(logits / temperature); 0 on padding
    finished: torch.Tensor  # (B,) bool, True when the row emitted EOS

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = True
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (padding gets 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample one response per prompt. temperature == 0 decodes greedily (log-probs at temperature 1)."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    batch = len(prompts)
    attention = prompt_mask.long()
    cache = DynamicCache()
    out = model(
        input_ids=prompt_ids,
        attention_mask=attention,
        position_ids=positions(prompt_mask),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    next_position = prompt_mask.sum(-1, keepdim=True)
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long)
    log_probs = torch.zeros((batch, max_new_tokens))
    alive = torch.ones(batch, dtype=torch.bool)
    finished = torch.zeros(batch, dtype=torch.bool)
    steps = 0
    for t in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()
        scaled = logits / temperature if temperature > 0 else logits
        token_log_probs = torch.log_softmax(scaled, dim=-1)
        if temperature > 0:
            token = _sample_top_p(token_log_probs, top_p, generator)
        else:
            token = logits.argmax(-1)
        tokens[:, t] = torch.where(alive, token, pad_id)
        log_probs[:, t] = torch.where(alive, token_log_probs.gather(-1, token[:, None])[:, 0], 0.0)
        steps = t + 1
        hit_eos = alive & (token == eos_id)
        finished |= hit_eos
        alive &= ~hit_eos
        if not alive.any() or t == max_new_tokens - 1:
            break
        attention = torch.cat([attention, torch.ones((batch, 1), dtype=torch.long)], dim=-1)
        out = model(
            input_ids=tokens[:, t : t + 1],
            attention_mask=attention,
            position_ids=next_position,
            past_key_values=cache,
            use_cache=True,
        )
        next_position = next_position + 1
    response_ids = tokens[:, :steps]
    response_mask = _mask_through_eos(response_ids, eos_id, finished)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=torch.where(response_mask, response_ids, pad_id),
        response_mask=response_mask,
        log_probs=log_probs[:, :steps] * response_mask,
        finished=finished,
    )


def _sample_top_p(log_probs: torch.Tensor, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    probs = log_probs.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _mask_through_eos(response_ids: torch.Tensor, eos_id: int, finished: torch.Tensor) -> torch.Tensor:
    """True up to and including each row's first EOS (all True for rows that never stopped)."""
    is_eos = response_ids == eos_id
    eos_seen_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return ~eos_seen_before | ~finished[:, None]


def teacher_forced(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies of given responses, one full forward (as verl's actor).

    Same layout as `sample` returns: left-padded prompts, right-padded responses.
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=-1)
    mask = torch.cat([prompt_mask, response_mask], dim=-1)
    width = response_ids.shape[1]
    logits = model(
        input_ids=input_ids,
        attention_mask=mask.long(),
        position_ids=positions(mask),
        use_cache=False,
        logits_to_keep=width + 1,
    ).logits[:, :-1, :].float() / temperature
    token_log_probs = torch.log_softmax(logits, dim=-1).gather(-1, response_ids[..., None])[..., 0]
    return token_log_probs, entropy_from_logits(logits)
