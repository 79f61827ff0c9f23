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
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
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
    """Sample one response per prompt. temperature == 0 decodes greedily (log-probs at temperature 1).

    The prompt goes through the HF forward; decoding runs `_Decoder` on the
    same weights. Rows that emitted EOS are dropped from the batch and the KV
    cache, so a rollout where most answers are short costs what its tokens
    cost, not batch x max_new_tokens.
    """
    if model.config.model_type != "llama":
        raise ValueError(f"the sampler decodes Llama checkpoints, not {model.config.model_type!r}")
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    batch, prompt_width = prompt_ids.shape
    cache = DynamicCache()
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask.long(),
        position_ids=positions(prompt_mask),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1, :].float()
    # one mask for the whole decode, sliced per step: columns are prompt then response positions
    mask = torch.cat([prompt_mask, torch.ones((batch, max_new_tokens), dtype=torch.bool)], dim=-1)
    decoder = _Decoder(model, cache, mask, prompt_width)
    next_position = prompt_mask.sum(-1, keepdim=True)
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long)
    log_probs = torch.zeros((batch, max_new_tokens))
    lengths = torch.zeros(batch, dtype=torch.long)
    finished = torch.zeros(batch, dtype=torch.bool)
    rows = torch.arange(batch)  # original row of each row still decoding
    for t in range(max_new_tokens):
        token_log_probs = torch.log_softmax(logits / temperature if temperature > 0 else logits, dim=-1)
        token = _sample_top_p(token_log_probs, top_p, generator) if temperature > 0 else logits.argmax(-1)
        tokens[rows, t] = token
        log_probs[rows, t] = token_log_probs.gather(-1, token[:, None])[:, 0]
        lengths[rows] += 1
        hit_eos = token == eos_id
        finished[rows[hit_eos]] = True
        if t == max_new_tokens - 1 or hit_eos.all():
            break
        if hit_eos.any():
            keep = (~hit_eos).nonzero()[:, 0]
            decoder.keep_rows(keep)
            rows, token, next_position = rows[keep], token[keep], next_position[keep]
        logits = decoder.step(token, next_position, column=prompt_width + t)
        next_position = next_position + 1
    width = int(lengths.max())
    response_mask = torch.arange(width)[None, :] < lengths[:, None]
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=tokens[:, :width],
        response_mask=response_mask,
        log_probs=log_probs[:, :width],
        finished=finished,
    )


class _Decoder:
    """One-token decode steps of an HF Llama with a preallocated KV cache.

    HF's forward spends a decode step mostly in Python (mask building, cache
    concatenation, per-module hooks); this calls the same modules and
    weights with a fixed-size cache written in place and a boolean mask
    sliced from the rollout's padding mask.
    """

    def __init__(self, model, prefill: DynamicCache, mask: torch.Tensor, prompt_width: int) -> None:
        self.model = model
        self.layers = model.model.layers[: model.config.num_hidden_layers]
        self.mask = mask  # (B, prompt + max_new): False on left padding
        self.keys, self.values = [], []
        for layer in prefill.layers:
            batch, heads, _, head_dim = layer.keys.shape
            keys = torch.zeros((batch, heads, mask.shape[1], head_dim), dtype=layer.keys.dtype)
            values = torch.zeros_like(keys)
            keys[:, :, :prompt_width] = layer.keys
            values[:, :, :prompt_width] = layer.values
            self.keys.append(keys)
            self.values.append(values)

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.mask = self.mask[rows]
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]

    def step(self, token: torch.Tensor, position: torch.Tensor, column: int) -> torch.Tensor:
        """Logits (float32) after feeding `token` at cache column `column` and RoPE position `position`."""
        base = self.model.model
        hidden = base.embed_tokens(token[:, None])
        cos, sin = base.rotary_emb(hidden, position)
        mask = self.mask[:, None, None, : column + 1]
        batch = token.shape[0]
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(batch, 1, -1, attn.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys[:, :, column] = k[:, :, 0]
            values[:, :, column] = v[:, :, 0]
            out = torch.nn.functional.scaled_dot_product_attention(
                q, keys[:, :, : column + 1], values[:, :, : column + 1], attn_mask=mask, scale=attn.scaling,
                enable_gqa=True,
            )
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, 1, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.model.lm_head(base.norm(hidden))[:, 0].float()


def _sample_top_p(log_probs: torch.Tensor, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    probs = log_probs.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    # inverse CDF with one uniform per row: torch's CPU RNG costs ~6 ns a number,
    # so multinomial / Gumbel noise over the whole vocabulary dominated a decode step
    cdf = probs.cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=probs.shape[-1] - 1)


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
