import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl_probe.sampler import MIN_SHARED_PREFIX, distinct_prompts, sample, shared_prefix_length, teacher_forced
from test_probe_helpers import FEW_SHOT, TEMPLATE, make_problems, tiny_checkpoint


@pytest.fixture(scope="module")
def model_and_prompts(tmp_path_factory):
    torch.set_num_threads(1)
    path = tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), sft_steps=40)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    # ragged prompt lengths so that left padding is exercised
    prompts = [tokenizer.encode(TEMPLATE.format(question=p["question"]) + " " * (i % 3))
               for i, p in enumerate(make_problems(24, seed=5))]
    return model, tokenizer, prompts


def _sample(model, tokenizer, prompts, seed, **kw):
    kw = {"max_new_tokens": 16, "temperature": 1.0, **kw}
    kw.setdefault("stop_ids", [tokenizer.eos_token_id])
    return sample(model, prompts, pad_id=tokenizer.pad_token_id,
                  generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_probs_equal_full_forward_of_each_unpadded_sequence(model_and_prompts, temperature):
    model, tokenizer, prompts = model_and_prompts
    rollout = _sample(model, tokenizer, prompts, seed=0, temperature=temperature)
    assert rollout.finished.any() and rollout.response_mask.any()
    for row, prompt in enumerate(prompts):
        response = rollout.response_ids[row][rollout.response_mask[row]]
        ids = torch.tensor(prompt + response.tolist())[None]
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1] / temperature
        expected = torch.log_softmax(logits, -1).gather(-1, response[:, None])[:, 0]
        torch.testing.assert_close(rollout.log_probs[row][rollout.response_mask[row]], expected, atol=1e-4, rtol=0)
    # the batched training forward agrees too
    with torch.no_grad():
        forced, entropy = teacher_forced(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                         rollout.response_mask, temperature)
    torch.testing.assert_close(forced * rollout.response_mask, rollout.log_probs, atol=1e-4, rtol=0)
    assert (entropy >= 0).all()


def test_seeded_sampling_is_deterministic_and_seed_dependent(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    a, b = (_sample(model, tokenizer, prompts, seed=3) for _ in range(2))
    c = _sample(model, tokenizer, prompts, seed=4)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.log_probs, b.log_probs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_eos_stops_rows_and_max_length_clips_others(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    rollout = _sample(model, tokenizer, prompts, seed=1, max_new_tokens=6)
    eos = tokenizer.eos_token_id
    lengths = rollout.response_lengths
    for row in range(len(prompts)):
        tokens = rollout.response_ids[row][: lengths[row]]
        if rollout.finished[row]:
            assert tokens[-1] == eos and (tokens[:-1] != eos).all()
        else:
            assert lengths[row] == 6 and (tokens != eos).all()
    assert (rollout.log_probs[~rollout.response_mask] == 0).all()


def test_greedy_matches_argmax_and_top_p_keeps_only_the_nucleus(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    greedy = _sample(model, tokenizer, prompts[:4], seed=0, temperature=0.0, max_new_tokens=4)
    again = _sample(model, tokenizer, prompts[:4], seed=9, temperature=0.0, max_new_tokens=4)
    assert torch.equal(greedy.response_ids, again.response_ids)
    # top_p so small that only the most likely token survives: sampling equals greedy
    nucleus = _sample(model, tokenizer, prompts[:4], seed=2, temperature=1.0, top_p=1e-6, max_new_tokens=4)
    assert torch.equal(nucleus.response_ids, greedy.response_ids)


@pytest.mark.parametrize("top_p, expected", [(1.0, [0.5, 0.3, 0.15, 0.05]), (0.7, [0.625, 0.375, 0.0, 0.0])])
def test_token_draws_follow_the_nucleus_distribution(top_p, expected):
    from rl_probe.sampler import _draw

    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(40_000, 4)
    draws, log_probs = _draw(logits, 1.0, top_p, torch.Generator().manual_seed(0))
    # the log-prob is of the full distribution, the nucleus only restricts the draw
    torch.testing.assert_close(log_probs, logits[torch.arange(len(draws)), draws])
    frequencies = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(frequencies, torch.tensor(expected), atol=0.01, rtol=0)


def test_rejects_non_llama_models(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    model.config.model_type = "gpt2"
    try:
        with pytest.raises(ValueError, match="llama and qwen2"):
            _sample(model, tokenizer, prompts, seed=0)
    finally:
        model.config.model_type = "llama"


def test_qwen2_checkpoints_decode_with_their_qkv_biases(tmp_path):
    """Qwen2 is Llama with biases on q, k and v: the sampler's log-probs equal HF's Qwen2 forward."""
    from test_probe_helpers import llama_style_tokenizer, random_checkpoint

    tokenizer = llama_style_tokenizer(tmp_path / "tok")
    path = random_checkpoint(tmp_path / "qwen2", tokenizer, model_type="qwen2")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.config.model_type == "qwen2" and model.model.layers[0].self_attn.q_proj.bias is not None
    with torch.no_grad():  # random init leaves biases at 0, where a dropped bias would not show
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    prompts = [tokenizer.encode(TEMPLATE.format(question=p["question"])) for p in make_problems(6, seed=5)]
    rollout = sample(model, prompts, max_new_tokens=8, stop_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                     generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        forced, _ = teacher_forced(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                   rollout.response_mask, 1.0)
    torch.testing.assert_close(forced * rollout.response_mask, rollout.log_probs, atol=1e-4, rtol=0)


def test_any_stop_token_ends_a_row(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    free = _sample(model, tokenizer, prompts, seed=2, stop_ids=[-1])  # nothing stops: every row runs to the limit
    assert not free.finished.any()
    first = free.response_ids[:, 0].tolist()
    stops = sorted(set(first[:2]))  # two different tokens some rows start with
    stopped = _sample(model, tokenizer, prompts, seed=2, stop_ids=stops)
    for row, token in enumerate(first):
        if token in stops:
            assert stopped.finished[row] and stopped.response_lengths[row] == 1


@pytest.fixture(scope="module")
def grouped_rollout(model_and_prompts):
    """Groups of 6 rollouts of 4 prompts of different lengths, their rows interleaved, EOS ragged."""
    model, tokenizer, prompts = model_and_prompts
    grouped = [prompts[i % 4] for i in range(24)]
    shared = _sample(model, tokenizer, grouped, seed=7, max_new_tokens=12)
    unshared = _sample(model, tokenizer, grouped, seed=7, max_new_tokens=12, share_prefixes=False)
    return model, shared, unshared


def test_shared_prompt_prefixes_sample_what_separate_prefills_sample(grouped_rollout):
    model, shared, unshared = grouped_rollout
    lengths = shared.response_lengths
    assert shared.finished.any() and (~shared.finished).any() and len(set(lengths.tolist())) > 3  # ragged
    assert torch.equal(shared.response_ids, unshared.response_ids)
    assert torch.equal(shared.prompt_ids, unshared.prompt_ids) and torch.equal(shared.prompt_mask, unshared.prompt_mask)
    torch.testing.assert_close(shared.log_probs, unshared.log_probs, atol=1e-5, rtol=0)


def test_shared_prompt_prefixes_give_the_full_forwards_log_probs_and_gradients(grouped_rollout):
    model, rollout, _ = grouped_rollout
    results = {}
    for share in (True, False):
        model.zero_grad(set_to_none=True)
        log_probs, entropy = teacher_forced(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                            rollout.response_mask, 0.7, share_prefixes=share)
        # a loss that weighs rows differently, so that each row's gradient through the shared prompt counts
        weights = torch.linspace(-1, 1, len(log_probs))[:, None]
        ((log_probs + entropy) * rollout.response_mask * weights).sum().backward()
        results[share] = (log_probs * rollout.response_mask, entropy * rollout.response_mask,
                          {name: p.grad.clone() for name, p in model.named_parameters()})
    (lp_shared, ent_shared, grads_shared), (lp_full, ent_full, grads_full) = results[True], results[False]
    torch.testing.assert_close(lp_shared, lp_full, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_shared, ent_full, atol=1e-5, rtol=0)
    for name, grad in grads_full.items():
        torch.testing.assert_close(grads_shared[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    model.zero_grad(set_to_none=True)


def test_packed_groups_under_eager_attention_give_what_sdpa_gives(grouped_rollout):
    """The packed update hands HF a prepared block mask: boolean for SDPA, additive for eager."""
    model, rollout, _ = grouped_rollout
    eager = type(model)(model.config.__class__.from_dict({**model.config.to_dict(), "_attn_implementation": "eager"}))
    eager.load_state_dict(model.state_dict())
    eager.config._attn_implementation = "eager"
    with torch.no_grad():
        got = [teacher_forced(m, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                              rollout.response_mask, 1.0) for m in (model, eager.eval())]
    assert eager.config._attn_implementation == "eager" != model.config._attn_implementation
    torch.testing.assert_close(got[0][0] * rollout.response_mask, got[1][0] * rollout.response_mask, atol=1e-5, rtol=0)


# bf16 keeps 8 bits of mantissa: a log-prob of a few nats moves by a few hundredths
BF16_LOG_PROB_ATOL = 0.1


def test_bfloat16_sampling_and_update_log_probs_stay_near_float32(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    rollout = _sample(model, tokenizer, [prompts[i % 4] for i in range(24)], seed=7, max_new_tokens=12,
                      dtype=torch.bfloat16)
    mask = rollout.response_mask
    with torch.no_grad():
        fp32, _ = teacher_forced(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, mask, 1.0)
        bf16, _ = teacher_forced(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, mask, 1.0,
                                 dtype=torch.bfloat16)
    assert rollout.log_probs.dtype == bf16.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.float32  # the weights stay float32
    for name, log_probs in (("sampler", rollout.log_probs), ("update", bf16)):
        gap = ((log_probs - fp32) * mask).abs().max()
        assert 0 < gap <= BF16_LOG_PROB_ATOL, (name, gap)



def _common_prefix_sets(tokenizer, prompts):
    """Prompt sets named by what they exercise in the common-prefix sharing."""
    questions = [TEMPLATE.format(question=p["question"]) for p in make_problems(8, seed=6)]
    few_shot = [tokenizer.encode(FEW_SHOT + q + " " * (i % 3)) for i, q in enumerate(questions)]
    shortest = few_shot[0]
    return {
        "suffixes of different lengths": few_shot,
        "one prompt a prefix of the others": [shortest] + [shortest + tokenizer.encode(" " * n) for n in (1, 2, 3)],
        "groups of few-shot prompts": [few_shot[i % 3] for i in range(9)],
        "all prompts identical": [few_shot[1]] * 4,
        "no common prefix": prompts[:8],
    }


@pytest.fixture(scope="module")
def common_prefix_sets(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    return _common_prefix_sets(tokenizer, prompts)


@pytest.mark.parametrize("name, shares", [
    ("suffixes of different lengths", True), ("one prompt a prefix of the others", True),
    ("groups of few-shot prompts", True), ("all prompts identical", False), ("no common prefix", False),
])
def test_the_common_prefix_of_different_prompts_is_shared_when_it_pays(common_prefix_sets, name, shares):
    prompts = common_prefix_sets[name]
    shared = shared_prefix_length(distinct_prompts(prompts)[0])
    assert (shared >= MIN_SHARED_PREFIX) == shares and shared < min(len(p) for p in prompts)
    assert all(p[:shared] == prompts[0][:shared] for p in prompts)


@pytest.mark.parametrize("name", ["suffixes of different lengths", "one prompt a prefix of the others",
                                  "groups of few-shot prompts", "all prompts identical", "no common prefix"])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_a_shared_common_prefix_samples_what_separate_prefills_sample(model_and_prompts, common_prefix_sets, name,
                                                                      temperature):
    model, tokenizer, _ = model_and_prompts
    prompts = common_prefix_sets[name]
    shared, unshared = (_sample(model, tokenizer, prompts, seed=11, temperature=temperature, max_new_tokens=10,
                                share_prefixes=share) for share in (True, False))
    assert torch.equal(shared.response_ids, unshared.response_ids)
    assert torch.equal(shared.prompt_ids, unshared.prompt_ids) and torch.equal(shared.prompt_mask, unshared.prompt_mask)
    # same sums in another order: float32 rounding of a log-prob of a few nats
    torch.testing.assert_close(shared.log_probs, unshared.log_probs, atol=1e-5, rtol=0)
    # and the full forward of each row agrees (the returned prompts are left-padded as without sharing)
    with torch.no_grad():
        forced, _ = teacher_forced(model, shared.prompt_ids, shared.prompt_mask, shared.response_ids,
                                   shared.response_mask, temperature or 1.0, share_prefixes=False)
    torch.testing.assert_close(forced * shared.response_mask, shared.log_probs, atol=1e-4, rtol=0)


def test_common_prefix_sharing_is_deterministic_per_seed(model_and_prompts, common_prefix_sets):
    model, tokenizer, _ = model_and_prompts
    prompts = common_prefix_sets["groups of few-shot prompts"]
    a, b = (_sample(model, tokenizer, prompts, seed=5) for _ in range(2))
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.log_probs, b.log_probs)


def test_common_prefix_sharing_makes_every_tensor_on_the_models_device(model_and_prompts, common_prefix_sets):
    """A tensor made without the model's device would be a meta tensor under this default and fail."""
    model, tokenizer, _ = model_and_prompts
    prompts = common_prefix_sets["suffixes of different lengths"]
    generator = torch.Generator().manual_seed(0)
    torch.set_default_device("meta")
    try:
        rollout = sample(model, prompts, max_new_tokens=6, stop_ids=[tokenizer.eos_token_id],
                         pad_id=tokenizer.pad_token_id, generator=generator)
    finally:
        torch.set_default_device(None)
    assert rollout.log_probs.device.type == "cpu" and torch.isfinite(rollout.log_probs).all()
