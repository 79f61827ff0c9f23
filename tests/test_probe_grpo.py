import itertools
import math

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from rl_probe.embedded import behaviour_metrics, pass_at_k, shuffled_within_groups
from rl_probe.reward import score
from rl_probe.spec import PROBE_SPECS, ProbeSpec, get_probe_spec


def test_registered_adv_estimator_is_verls_grpo_and_matches_hand_computation():
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    spec = get_probe_spec("toy-smoke-v1")
    rewards = [1.0, 0.0, 0.0, 1.0, -1.0, -1.0, -1.0, -1.0]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]] * 2, dtype=torch.float32)
    lengths = mask.sum(-1).long()
    token_scores = torch.zeros(mask.shape)
    token_scores[torch.arange(8), lengths - 1] = torch.tensor(rewards)
    index = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    ours, _ = get_adv_estimator_fn(spec.adv_estimator)(token_level_rewards=token_scores, response_mask=mask,
                                                       index=index, norm_adv_by_std_in_grpo=spec.norm_adv_by_std)
    verl, _ = compute_grpo_outcome_advantage(token_scores, mask, index)
    torch.testing.assert_close(ours, verl)
    # (r - mean) / (unbiased std + eps), broadcast over the response tokens; a uniform group gets 0
    group = np.array(rewards[:4])
    hand = (group - group.mean()) / (group.std(ddof=1) + 1e-6)
    expected = torch.tensor(np.concatenate([hand, np.zeros(4)]), dtype=torch.float32)[:, None] * mask
    torch.testing.assert_close(ours, expected)
    assert abs(hand[0] - math.sqrt(3) / 2) < 1e-5


@pytest.mark.parametrize("n, c", [(8, 0), (8, 3), (10, 10), (12, 5), (6, 1)])
def test_pass_at_k_equals_brute_force_over_subsets(n, c):
    outcomes = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(outcomes, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_uniform_group_ratio_and_behaviour_metrics():
    texts = ["\\boxed{3}", "\\boxed{4}", "no", "Wait, \\boxed{4}", "x", "x", "x", "x"]
    results = [score(t, "4") for t in texts]
    metrics = behaviour_metrics(texts, results, torch.tensor([3, 3, 1, 5, 1, 1, 1, 1]), group_size=4)
    assert metrics["probe/uniform_group_ratio"] == 0.5  # the second group is all -1
    assert metrics["behaviour/reflection_rate"] == 1 / 8
    assert metrics["behaviour/boxed_first_ratio"] == 2 / 8
    assert metrics["behaviour/format_error_ratio"] == 5 / 8
    assert metrics["behaviour/correct_length_mean"] == 4.0


def test_dr_grpo_divides_token_sums_by_the_generation_budget_not_the_longest_response():
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    from rl_probe.embedded import _actor_config

    spec = get_probe_spec("toy-smoke-v1").model_copy(update={"loss_agg_mode": "seq-mean-token-sum-norm",
                                                             "max_response_length": 48})
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float32)  # this step's longest response: 3 tokens
    log_probs = torch.zeros(mask.shape)
    advantages = torch.tensor([[1.0] * 3, [-0.5] * 3])
    loss, _ = get_policy_loss_fn(spec.policy_loss)(
        old_log_prob=log_probs, log_prob=log_probs, advantages=advantages, response_mask=mask,
        loss_agg_mode=spec.loss_agg_mode, config=_actor_config(spec))
    # ratio 1: per-token loss -A; token sums -2 and 1.5, their mean over 2 sequences, / 48 tokens
    assert loss.item() == pytest.approx((-2.0 + 1.5) / 2 / 48)


def test_random_reward_control_shuffles_rewards_within_each_group_only():
    rewards = np.array([1.0, 0.0, -1.0, 0.0] * 2 + [1.0, 1.0, -1.0, -1.0] * 62)
    shuffled = shuffled_within_groups(rewards, 4, np.random.default_rng(7))
    groups, shuffled_groups = rewards.reshape(-1, 4), shuffled.reshape(-1, 4)
    # every group keeps its rewards (so its mean, spread and GRPO advantages' sizes), in another order
    np.testing.assert_array_equal(np.sort(groups, axis=1), np.sort(shuffled_groups, axis=1))
    assert (groups != shuffled_groups).any(axis=1).mean() > 0.5
    # which rollout earns which reward no longer tells right from wrong
    right = (groups == 1.0).reshape(-1)
    assert abs(shuffled[right].mean() - shuffled[~right].mean()) < 0.3
    np.testing.assert_array_equal(shuffled, shuffled_within_groups(rewards, 4, np.random.default_rng(7)))


def test_the_random_reward_control_is_its_own_spec():
    spec = get_probe_spec("toy-smoke-v1")
    control = spec.with_random_reward()
    assert control.reward_control == "random" and control.name == "toy-smoke-v1+random-reward"
    assert control.content_hash() != spec.content_hash()
    assert control.model_copy(update={"name": spec.name, "reward_control": "none"}).content_hash() == spec.content_hash()
    with pytest.raises(ValueError, match="embedded engine only"):
        get_probe_spec("octothinker-v1").with_random_reward()


def test_the_random_reward_control_evaluates_greedily_only():
    """The control is read on greedy accuracy alone, so it skips the sampled avg@k evaluation
    and differs from its probe's spec in nothing else."""
    spec = get_probe_spec("toy-smoke-v1").model_copy(update={"eval_sampled": 4})
    control = spec.with_random_reward()
    assert control.eval_sampled == 0 and spec.eval_sampled == 4
    restored = control.model_copy(update={"name": spec.name, "reward_control": "none", "eval_sampled": 4})
    assert restored.content_hash() == spec.content_hash()


def test_spec_hash_is_stable_and_sensitive():
    spec = get_probe_spec("toy-cpu-v1")
    assert spec.content_hash() == ProbeSpec.model_validate(spec.model_dump()).content_hash()
    assert spec.content_hash() != spec.model_copy(update={"lr": spec.lr * 2}).content_hash()
    assert len({s.content_hash() for s in PROBE_SPECS.values()}) == len(PROBE_SPECS)
    octo = get_probe_spec("octothinker-v1")
    assert (octo.engine, octo.prompts_per_step, octo.group_size, octo.mini_batch_prompts) == ("verl", 128, 16, 64)
    assert (octo.temperature, octo.lr, octo.kl_coef, octo.max_response_length) == (1.0, 1e-6, 0.0, 4096)
    with pytest.raises(ValueError):
        ProbeSpec(**{**spec.model_dump(), "mini_batch_prompts": 5})
    with pytest.raises(Exception):
        spec.lr = 1.0  # frozen
    scheduled = ProbeSpec(**{**spec.model_dump(), "length_schedule": {0: 16, 10: 32}})
    assert [scheduled.response_length_at(s) for s in (0, 9, 10, 50)] == [16, 16, 32, 32]
    # the run store keeps specs as JSON: the hash survives the round trip
    for s in (spec, scheduled):
        assert ProbeSpec.model_validate_json(s.model_dump_json()).content_hash() == s.content_hash()
        assert ProbeSpec.model_validate(s.model_dump(mode="json")).content_hash() == s.content_hash()


def test_dtype_field_keeps_the_shipped_hashes_at_float32_and_enters_the_hash_otherwise():
    # the shipped specs' hashes from before the field existed
    assert {name: spec.content_hash() for name, spec in PROBE_SPECS.items()
            if name in ("toy-smoke-v1", "toy-cpu-v5", "smollm2-cpu-v2")} == {
        "toy-smoke-v1": "307db5e0b28ac11d", "toy-cpu-v5": "2812e76677533a7a", "smollm2-cpu-v2": "e828ce827ba55a62"}
    spec = get_probe_spec("toy-cpu-v5")
    bf16 = spec.model_copy(update={"dtype": "bfloat16"})
    assert bf16.content_hash() != spec.content_hash()
    assert ProbeSpec.model_validate(bf16.model_dump(mode="json")).content_hash() == bf16.content_hash()
    with pytest.raises(ValueError):
        ProbeSpec(**{**spec.model_dump(), "dtype": "float16"})
