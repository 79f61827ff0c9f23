"""Batched sampling with a KV cache for Llama-style HF causal LMs.

The decoding loop is ours (not `model.generate`) so that the per-token
log-probs are exactly the policy's, `log_softmax(logits / temperature)` as
verl's actor computes them, and stopping is explicit. Prompts are
left-padded (after the first tokens they all share) so every row decodes its next token at
the same column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from verl.utils.torch_functional import entropy_from_logits


# Llama and Qwen2 (Llama with biases on q, k and v) share one decoder layout
DECODABLE = ("llama", "qwen2")


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P) left-padded with pad_id
    prompt_mask: torch.Tensor  # (B, P) bool, True on real prompt tokens
    response_ids: torch.Tensor  # (B, T) right-padded with pad_id after EOS / max length
    response_mask: torch.Tensor  # (B, T) bool, True on generated tokens (the stop token included)
    log_probs: torch.Tensor  # (B, T) log p(token) under softmax(logits / temperature); 0 on padding
    finished: torch.Tensor  # (B,) bool, True when the row emitted a stop token

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)


# sharing costs one more forward pass and a cache copy per layer; shorter common prefixes run with each row
MIN_SHARED_PREFIX = 16


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device | str = "cpu",
             after: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts padded to the longest with pad_id (mask False there): on the left, or after their
    first `after` tokens."""
    width = max(len(p) for p in prompts)
    ids = [list(p[:after]) + [pad_id] * (width - len(p)) + list(p[after:]) for p in prompts]
    mask = [[True] * after + [False] * (width - len(p)) + [True] * (len(p) - after) for p in prompts]
    return torch.tensor(ids, dtype=torch.long, device=device), torch.tensor(mask, device=device)


def distinct_prompts(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The distinct prompts in order of first appearance, and the index of each prompt among them."""
    first: dict[tuple[int, ...], int] = {}
    index = [first.setdefault(tuple(p), len(first)) for p in prompts]
    return [list(p) for p in first], index


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """How many first tokens all prompts share, short of the shortest prompt's last token; 0 when
    fewer than two prompts or fewer than MIN_SHARED_PREFIX tokens would be shared."""
    if len(prompts) < 2:
        return 0
    shared = 0
    for column in zip(*prompts):  # zip stops at the shortest prompt
        if len(set(column)) > 1:
            break
        shared += 1
    # each row keeps at least its last token to itself: that token's logits start the row's decoding
    shared = min(shared, min(len(p) for p in prompts) - 1)
    return shared if shared >= MIN_SHARED_PREFIX else 0


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (padding gets 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    share_prefixes: bool = True,
    dtype: torch.dtype | None = None,
) -> Rollout:
    """Sample one response per prompt. temperature == 0 decodes greedily (log-probs at temperature 1).

    A row ends with the first of `stop_ids` it emits (EOS, an end-of-turn token), which is
    part of its response. Prefill and decoding run `_Decoder` on the model's weights, in
    `dtype` (default: the weights' own; logits and log-probs are float32 either way). With
    `share_prefixes`, a prompt that several rows share (a GRPO group) is prefilled once and
    its KV cache copied to those rows, and the first tokens that all distinct prompts share (a
    system turn, few-shot examples) are prefilled once for all of them. Rows that emitted a
    stop token are dropped from the batch and the KV cache, so a rollout where most answers
    are short costs about what its tokens cost, not batch x max_new_tokens. Every tensor, and `generator`, lives on the
    model's device.
    """
    if model.config.model_type not in DECODABLE:
        raise ValueError(f"the sampler decodes {' and '.join(DECODABLE)} checkpoints, not {model.config.model_type!r}")
    if getattr(model.config, "use_sliding_window", False):
        raise ValueError("sliding-window attention is not implemented in the sampler")
    device = model.device
    stop = torch.tensor(stop_ids, dtype=torch.long, device=device)
    distinct, prompt_index = distinct_prompts(prompts) if share_prefixes else (prompts, list(range(len(prompts))))
    shared = shared_prefix_length(distinct) if share_prefixes else 0
    # the decoder's cache layout: the shared prefix in the first columns, each row's padding after it
    cache_ids, cache_mask = left_pad(distinct, pad_id, device, after=shared)
    decoder = _Decoder(model, cache_mask, max_new_tokens, dtype)
    prompt_index = torch.tensor(prompt_index, device=device)
    logits = decoder.prefill(cache_ids, shared)[prompt_index]
    decoder.repeat_rows(prompt_index)
    distinct_ids, distinct_mask = left_pad(distinct, pad_id, device) if shared else (cache_ids, cache_mask)
    prompt_ids, prompt_mask = distinct_ids[prompt_index], distinct_mask[prompt_index]
    batch, prompt_width = prompt_ids.shape
    next_position = prompt_mask.sum(-1)
    # a row is dropped after its EOS, so its later columns keep pad_id and log-prob 0
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    log_probs = torch.zeros((batch, max_new_tokens), device=device)
    rows = torch.arange(batch, device=device)  # original row of each row still in the decode batch
    steps = max_new_tokens
    for t in range(max_new_tokens):
        token, token_log_prob = _draw(logits, temperature, top_p, generator)
        tokens[rows, t] = token
        log_probs[rows, t] = token_log_prob
        done = torch.isin(token, stop)
        finished_rows = int(done.sum())
        if t == max_new_tokens - 1 or finished_rows == len(rows):
            steps = t + 1
            break
        if finished_rows:
            order = decoder.drop_rows(done)
            rows, token, next_position = rows[order], token[order], next_position[order]
        logits = decoder.step(token, next_position, column=prompt_width + t)
        next_position = next_position + 1
    is_eos = torch.isin(tokens[:, :steps], stop)
    finished = is_eos.any(-1)
    lengths = torch.where(finished, is_eos.int().argmax(-1) + 1, steps)
    width = int(lengths.max())
    response_mask = torch.arange(width, device=device)[None, :] < lengths[:, None]
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=tokens[:, :width],
        response_mask=response_mask,
        log_probs=log_probs[:, :width],
        finished=finished,
    )


class _Decoder:
    """Prefill and one-token decode steps of an HF Llama on the model's own weights, repacked.

    HF's forward spends a decode step mostly in Python and small ops (mask
    building, cache concatenation, per-module calls); with a tiny batch-64
    step every op counts. The prefill runs the matmuls on the prompts' real
    tokens only, packed, not on the left padding (a third of a batch of
    12-36 token prompts). Per layer this runs one matmul for q, k and v (the
    attention scale folded into the q weights), one for gate and up, RoPE on
    q and k together from a cos/sin table computed once, and a fixed-size KV
    cache written in place (keys stored transposed so q @ K is a plain
    batched matmul).
    """

    def __init__(self, model, prompt_mask: torch.Tensor, max_new_tokens: int, dtype: torch.dtype | None) -> None:
        base, config = model.model, model.config
        rope_type = base.rotary_emb.rope_type
        if "dynamic" in rope_type or "longrope" in rope_type:
            raise ValueError(f"RoPE type {rope_type!r} changes with sequence length; the sampler's table cannot follow")
        dtype = dtype or base.embed_tokens.weight.dtype
        device = prompt_mask.device
        self.embed = base.embed_tokens.weight.to(dtype)
        self.norm = (base.norm.weight.to(dtype), base.norm.variance_epsilon)
        self.lm_head = _Linear.of(model.lm_head).to(dtype)
        batch, prompt_width = prompt_mask.shape
        width = prompt_width + max_new_tokens
        # additive attention bias, -inf on left padding: (B, 1, 1, width) broadcasts over kv heads and groups
        self.bias = torch.zeros((batch, 1, 1, width), dtype=dtype, device=device)
        self.bias[:, 0, 0, :prompt_width].masked_fill_(~prompt_mask, float("-inf"))
        cos, sin = base.rotary_emb(self.embed, torch.arange(width, device=device)[None])
        half = cos.shape[-1] // 2
        # rotate_half(x) * sin == x.roll(half) * signed_sin: one roll instead of slices, neg and cat
        signed_sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
        self.rope = torch.stack([cos[0], signed_sin], dim=1)  # (position, cos/signed sin, head_dim)
        self.layers = [_Layer(layer, config, dtype) for layer in base.layers[: config.num_hidden_layers]]
        kv_heads, head_dim = config.num_key_value_heads, self.layers[0].head_dim
        # keys (B, kv_heads, head_dim, width), values (B, kv_heads, width, head_dim)
        self.keys = [torch.zeros((batch, kv_heads, head_dim, width), dtype=dtype, device=device)
                     for _ in self.layers]
        self.values = [torch.zeros((batch, kv_heads, width, head_dim), dtype=dtype, device=device)
                       for _ in self.layers]
        self.prompt_mask = prompt_mask

    def prefill(self, prompt_ids: torch.Tensor, shared: int = 0) -> torch.Tensor:
        """Fill the cache with the prompts; logits (float32) for each row's first response token.

        The first `shared` columns hold the same tokens in every row: they run once, as row 0,
        their cache is copied to the other rows, and each row's remaining columns run on top of it.
        """
        mask = self.prompt_mask
        if shared:
            self._prefill_columns(prompt_ids[:1, :shared], mask[:1, :shared], 0,
                                  [k[:1] for k in self.keys], [v[:1] for v in self.values])
            for keys, values in zip(self.keys, self.values):
                keys[1:, ..., :shared] = keys[:1, ..., :shared]
                values[1:, :, :shared] = values[:1, :, :shared]
        hidden = self._prefill_columns(prompt_ids, mask, shared, self.keys, self.values)
        last = mask[:, shared:].sum(-1).cumsum(0) - 1  # each row's last prompt token (the last column)
        hidden = F.rms_norm(hidden[last], hidden.shape[-1:], *self.norm)
        return F.linear(hidden, *self.lm_head).float()

    def _prefill_columns(self, prompt_ids, mask, start, keys, values) -> torch.Tensor:
        """Run the real tokens of columns start.. (queries) against the cache's columns 0.. (keys).

        Columns before `start` must already be in `keys` and `values`; returns the hidden states of
        the queries, packed row-major.
        """
        width = mask.shape[1]
        queries = mask[:, start:]
        hidden = F.embedding(prompt_ids[:, start:][queries], self.embed)  # (real tokens, hidden), row-major
        rope = self.rope[positions(mask)[:, start:][queries]]
        cos, sin = rope[:, None, 0], rope[:, None, 1]
        # (B, 1, 1, query, key): causal over real keys; padded queries see every key to stay finite
        causal = torch.ones((width, width), dtype=torch.bool, device=mask.device).tril()[start:]
        visible = (causal & mask[:, None, :]) | ~queries[:, :, None]
        bias = torch.zeros(visible.shape, dtype=self.embed.dtype, device=mask.device)
        bias = bias.masked_fill_(~visible, float("-inf"))[:, None, None]
        for layer, layer_keys, layer_values in zip(self.layers, keys, values):
            hidden = layer.prefill(hidden, cos, sin, layer_keys, layer_values, bias, mask, start)
        return hidden

    def repeat_rows(self, index: torch.Tensor) -> None:
        """Row i of the cache becomes the prefilled row index[i]: a shared prompt's cache for each of its rows."""
        self.bias = self.bias[index]
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]

    def drop_rows(self, dropped: torch.Tensor) -> torch.Tensor:
        """Drop the rows where `dropped` is True; returns the old index of each remaining row.

        The buffers keep their allocation and the batch becomes their first
        rows: rows that stay past the new end move into the dropped rows'
        slots, so the copy costs what the dropped rows hold, not the batch.
        """
        batch = len(dropped)
        kept = batch - int(dropped.sum())
        holes = dropped[:kept].nonzero()[:, 0]
        movers = (~dropped[kept:]).nonzero()[:, 0] + kept
        for buffer in (self.bias, *self.keys, *self.values):
            buffer[holes] = buffer[movers]
        self.bias = self.bias[:kept]
        self.keys = [k[:kept] for k in self.keys]
        self.values = [v[:kept] for v in self.values]
        order = torch.arange(kept, device=dropped.device)
        order[holes] = movers
        return order

    def step(self, token: torch.Tensor, position: torch.Tensor, column: int) -> torch.Tensor:
        """Logits (float32) after feeding `token` at cache column `column` and RoPE position `position`."""
        hidden = F.embedding(token, self.embed)
        rope = self.rope[position]
        cos, sin = rope[:, None, 0], rope[:, None, 1]
        bias = self.bias[..., : column + 1]
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            hidden = layer.step(hidden, cos, sin, keys, values, bias, column)
        hidden = F.rms_norm(hidden, hidden.shape[-1:], *self.norm)
        return F.linear(hidden, *self.lm_head).float()


class _Layer:
    def __init__(self, layer, config, dtype: torch.dtype) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.head_dim = attn.head_dim
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.input_norm = (layer.input_layernorm.weight.to(dtype), layer.input_layernorm.variance_epsilon)
        self.post_norm = (layer.post_attention_layernorm.weight.to(dtype),
                          layer.post_attention_layernorm.variance_epsilon)
        self.qkv = _Linear.cat([_Linear.of(attn.q_proj).scaled(attn.scaling), _Linear.of(attn.k_proj),
                                _Linear.of(attn.v_proj)]).to(dtype)
        self.o = _Linear.of(attn.o_proj).to(dtype)
        self.gate_up = _Linear.cat([_Linear.of(mlp.gate_proj), _Linear.of(mlp.up_proj)]).to(dtype)
        self.down = _Linear.of(mlp.down_proj).to(dtype)
        self.act = mlp.act_fn
        self.intermediate = mlp.gate_proj.out_features

    def prefill(self, hidden, cos, signed_sin, keys, values, bias, mask, start):
        """`hidden` holds the real tokens of columns start.. packed (row-major); attention runs on the
        padded layout, those columns' queries against the keys of every column up to the mask's width."""
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        batch, width = mask.shape
        queries, query_width = mask[:, start:], width - start
        qk_width = (heads + kv_heads) * head_dim
        qkv = F.linear(F.rms_norm(hidden, hidden.shape[-1:], *self.input_norm), *self.qkv)
        qk = qkv[:, :qk_width].view(-1, heads + kv_heads, head_dim)
        qk = torch.addcmul(qk * cos, qk.roll(head_dim // 2, -1), signed_sin)
        keys[..., start:width].permute(0, 3, 1, 2)[queries] = qk[:, heads:]
        values[:, :, start:width].transpose(1, 2)[queries] = qkv[:, qk_width:].view(-1, kv_heads, head_dim)
        q = qk.new_zeros((batch, query_width, heads, head_dim))
        q[queries] = qk[:, :heads]
        group = heads // kv_heads
        # (B, kv, group x query, dim): one matmul per kv head, the cache is not expanded over the group
        q = q.view(batch, query_width, kv_heads, group, head_dim).permute(0, 2, 3, 1, 4).reshape(
            batch, kv_heads, group * query_width, head_dim)
        scores = torch.matmul(q, keys[..., :width]).view(batch, kv_heads, group, query_width, width).add_(bias)
        out = torch.matmul(torch.softmax(scores, dim=-1).view(batch, kv_heads, group * query_width, width),
                           values[:, :, :width])
        out = out.view(batch, kv_heads, group, query_width, head_dim).permute(0, 3, 1, 2, 4)[queries]
        out = out.reshape(-1, heads * head_dim)
        return self._rest(hidden, out)

    def step(self, hidden, cos, signed_sin, keys, values, bias, column):
        batch, heads, kv_heads, head_dim = hidden.shape[0], self.heads, self.kv_heads, self.head_dim
        qk_width = (heads + kv_heads) * head_dim
        qkv = F.linear(F.rms_norm(hidden, hidden.shape[-1:], *self.input_norm), *self.qkv)
        qk = qkv[:, :qk_width].view(batch, -1, head_dim)
        qk = torch.addcmul(qk * cos, qk.roll(head_dim // 2, -1), signed_sin)  # RoPE: q cos + rotate_half(q) sin
        keys[..., column] = qk[:, heads:]
        values[:, :, column] = qkv[:, qk_width:].view(batch, kv_heads, head_dim)
        # q heads h = kv * group + g share kv head kv (HF's repeat_kv order)
        q = qk[:, :heads].view(batch, kv_heads, heads // kv_heads, head_dim)
        scores = torch.matmul(q, keys[..., : column + 1]).add_(bias)
        out = torch.matmul(torch.softmax(scores, dim=-1), values[:, :, : column + 1])
        return self._rest(hidden, out.view(batch, heads * head_dim))

    def _rest(self, hidden, attention):
        """Output projection, residuals and MLP after attention, for any leading shape."""
        hidden = hidden + F.linear(attention, *self.o)
        gate_up = F.linear(F.rms_norm(hidden, hidden.shape[-1:], *self.post_norm), *self.gate_up)
        inner = self.act(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :]
        return hidden + F.linear(inner, *self.down)


class _Linear(NamedTuple):
    """Weight and optional bias of an nn.Linear, to be fused along the output dimension."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def of(cls, linear: torch.nn.Linear) -> "_Linear":
        return cls(linear.weight, linear.bias)

    def to(self, dtype: torch.dtype) -> "_Linear":
        return _Linear(self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype))

    def scaled(self, factor: float) -> "_Linear":
        return _Linear(self.weight * factor, None if self.bias is None else self.bias * factor)

    @staticmethod
    def cat(parts: list["_Linear"]) -> "_Linear":
        weight = torch.cat([p.weight for p in parts])
        if all(p.bias is None for p in parts):
            return _Linear(weight, None)
        bias = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.weight.shape[0]) for p in parts])
        return _Linear(weight, bias)


# exp of a logit more than ~87 below the row's max is a float32 denormal, which
# CPUs compute ~100x slower; below e^-60 of the top token a token has no mass
# at float32 resolution of the CDF, so weights are floored there
_LOGIT_FLOOR = -60.0


def _draw(logits: torch.Tensor, temperature: float, top_p: float,
          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, log p(token)) per row under softmax(logits / temperature); argmax at temperature 0 (log p at 1)."""
    scaled = logits / temperature if temperature > 0 else logits
    shifted = scaled - scaled.amax(-1, keepdim=True)
    weights = shifted.clamp(min=_LOGIT_FLOOR).exp_()
    if temperature == 0:
        token = shifted.argmax(-1)
        total = weights.sum(-1)
    else:
        # inverse CDF with one uniform per row: torch's CPU RNG costs ~6 ns a number,
        # so multinomial / Gumbel noise over the whole vocabulary dominated a decode step
        cdf = weights.cumsum(-1)
        total = cdf[:, -1]
        if top_p < 1.0:
            cdf = _nucleus(weights / total[:, None], top_p).cumsum(-1)
        u = torch.rand((logits.shape[0], 1), generator=generator, device=logits.device) * cdf[:, -1:]
        token = torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=logits.shape[-1] - 1)
    return token, shifted.gather(-1, token[:, None])[:, 0] - total.log()


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """probs with everything outside the smallest top-probability prefix reaching top_p zeroed."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # always keeps at least the top token
    drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))


def teacher_forced(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
    *,
    share_prefixes: bool = True,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies of given responses (as verl's actor computes them), with grad.

    Same layout as `sample` returns: left-padded prompts, right-padded responses. With
    `share_prefixes`, rows with the same prompt (a GRPO group) run it once, packed with their
    responses into one sequence under a block mask, so a group of n rollouts costs one prompt,
    not n, and its responses' real tokens only (gradients reach the prompt's activations from
    every row). `dtype` bfloat16 runs the forward under autocast; log-probs are float32.
    """
    with torch.autocast(prompt_ids.device.type, dtype=dtype or torch.float32, enabled=dtype == torch.bfloat16):
        if share_prefixes:
            rows = torch.cat([prompt_ids, prompt_mask.long()], dim=-1)
            distinct, index = torch.unique(rows, dim=0, return_inverse=True)
            if len(distinct) < len(rows):
                return _log_probs_over_shared_prompts(model, distinct, index, response_ids, response_mask,
                                                      temperature)
        input_ids = torch.cat([prompt_ids, response_ids], dim=-1)
        mask = torch.cat([prompt_mask, response_mask], dim=-1)
        logits = model(
            input_ids=input_ids,
            attention_mask=mask.long(),
            position_ids=positions(mask),
            use_cache=False,
            logits_to_keep=response_ids.shape[1] + 1,
        ).logits[:, :-1, :]
    return _token_log_probs(logits, response_ids, temperature)


def _log_probs_over_shared_prompts(model, distinct: torch.Tensor, index: torch.Tensor, response_ids: torch.Tensor,
                                   response_mask: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of the responses, each distinct prompt's rows packed into one sequence.

    `distinct` holds the distinct rows of [prompt ids | prompt mask], `index` each row's among
    them. A sequence is its prompt's real tokens, then each row's response but its last token
    (which predicts nothing scored), back to back; a block mask lets a response token see the
    prompt and its own row's earlier tokens only, and each row's positions continue from the
    prompt. So a prompt runs once, with grad, and neither left padding nor the right padding of
    ragged responses reaches a matmul or the vocabulary-wide softmax.
    """
    width = distinct.shape[1] // 2
    prompt_ids, prompt_mask = distinct[:, :width], distinct[:, width:].bool()
    device, lengths = response_ids.device, response_mask.sum(-1).tolist()
    tokens, places, blocks, reads = [], [], [], []  # reads: per row, its sequence and the positions it reads
    for group in range(len(distinct)):
        prompt = prompt_ids[group][prompt_mask[group]]
        parts, place, block = [prompt], [torch.arange(len(prompt), device=device)], [torch.zeros_like(prompt)]
        offset = len(prompt)
        for row in (index == group).nonzero()[:, 0].tolist():
            span = max(lengths[row] - 1, 0)
            parts.append(response_ids[row, :span])
            place.append(torch.arange(len(prompt), len(prompt) + span, device=device))
            block.append(torch.full((span,), row + 1, device=device))
            # the prompt's last token predicts the first response token, each response token the next
            reads.append((row, group, [len(prompt) - 1, *range(offset, offset + span)][:lengths[row]]))
            offset += span
        tokens.append(torch.cat(parts))
        places.append(torch.cat(place))
        blocks.append(torch.cat(block))
    length = max(len(t) for t in tokens)

    def padded(parts: list[torch.Tensor], value: int) -> torch.Tensor:
        return torch.stack([F.pad(t, (0, length - len(t)), value=value) for t in parts])

    block = padded(blocks, -1)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    seen = causal & ((block[:, None, :] == 0) | (block[:, None, :] == block[:, :, None]))
    seen |= torch.eye(length, dtype=torch.bool, device=device)  # a padding query sees itself: no empty softmax
    seen = seen[:, None]  # (sequences, 1, query, key), as HF takes a prepared mask
    if model.config._attn_implementation != "sdpa":  # eager attention adds its mask
        seen = torch.zeros(seen.shape, dtype=model.dtype, device=device).masked_fill_(~seen, torch.finfo(model.dtype).min)
    hidden = model.get_decoder()(input_ids=padded(tokens, 0), attention_mask=seen, position_ids=padded(places, 0),
                                 use_cache=False).last_hidden_state
    rows = torch.tensor([row for row, _, at in reads for _ in at], device=device)
    columns = torch.tensor([column for _, _, at in reads for column in range(len(at))], device=device)
    flat = torch.tensor([group * length + position for _, group, at in reads for position in at], device=device)
    logits = model.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[flat])
    token_log_probs, entropy = _token_log_probs(logits, response_ids[rows, columns], temperature)
    out = torch.zeros(response_ids.shape, dtype=token_log_probs.dtype, device=device)
    return out.index_put((rows, columns), token_log_probs), out.index_put((rows, columns), entropy)


def _token_log_probs(logits: torch.Tensor, response_ids: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.float() / temperature
    token_log_probs = torch.log_softmax(logits, dim=-1).gather(-1, response_ids[..., None])[..., 0]
    return token_log_probs, entropy_from_logits(logits)
