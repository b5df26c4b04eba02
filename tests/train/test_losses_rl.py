"""GRPO / PPO formulas (group advantages, clipped surrogate, k3 KL, GAE, clipped value loss),
against values worked out by hand with math.log / math.exp."""

import math

import pytest
import torch

from lmforge.train.losses.rl import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    group_advantages,
    grpo_loss,
    k3_kl,
    masked_mean,
    masked_whiten,
)


def approx(value):
    if isinstance(value, list | tuple):
        return [pytest.approx(v, abs=1e-6) for v in value]
    return pytest.approx(value, abs=1e-6)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_group_advantages_use_the_unbiased_group_std():
    adv = group_advantages(t([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), 3)
    # group 1: mean 2, std sqrt(((-1)^2 + 0 + 1^2) / (3 - 1)) = 1
    assert adv.tolist()[:3] == approx([-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4)])
    assert adv.tolist()[3:] == [0.0, 0.0, 0.0]
    assert group_advantages(t([4.0, -2.0]), 1).tolist() == [0.0, 0.0]  # one answer per prompt
    adv = group_advantages(t([0.0, 1.0, 1.0, 1.0]), 4, eps=0.0)
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)
    assert adv.tolist() == approx([-0.75 / std, 0.25 / std, 0.25 / std, 0.25 / std])


def test_masked_mean_and_whiten_skip_padding():
    values = t([[1.0, 2.0, 3.0], [5.0, 100.0, 100.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    assert masked_mean(values, mask).item() == approx(11 / 4)
    assert masked_mean(values, mask, dim=1).tolist() == approx([2.0, 5.0])
    mean, var = 2.75, (1.75**2 + 0.75**2 + 0.25**2 + 2.25**2) / 4  # population variance
    expected = [
        [(v - mean) / math.sqrt(var + 1e-8) for v in (1, 2, 3)],
        [(5 - mean) / math.sqrt(var + 1e-8), 0, 0],
    ]
    whitened = masked_whiten(values, mask)
    assert whitened[0].tolist() == approx(expected[0]) and whitened[1].tolist() == approx(
        expected[1]
    )


def test_k3_kl_by_hand():
    logps, ref = t([math.log(0.5), math.log(0.25)]), t([math.log(0.25), math.log(0.5)])
    # exp(ref - logp) - (ref - logp) - 1
    assert k3_kl(logps, ref).tolist() == approx([0.5 - math.log(0.5) - 1, 2 - math.log(2) - 1])


def test_clipped_policy_loss_with_negative_and_per_token_advantages():
    ratios = t([[2.0, 0.5]])
    loss, clipped = clipped_policy_loss(torch.log(ratios), t([[0.0, 0.0]]), t([-1.0]), clip=0.2)
    # A = -1: min(-2, -1.2) = -2 (not clipped); min(-0.5, -0.8) = -0.8 (clipped)
    assert loss.tolist() == [approx([2.0, 0.8])] and clipped.tolist() == [[0.0, 1.0]]
    loss, clipped = clipped_policy_loss(
        torch.log(ratios), t([[0.0, 0.0]]), t([[1.0, -1.0]]), clip=0.2
    )
    # A = +1 on ratio 2: min(2, 1.2) = 1.2; A = -1 on ratio 0.5: -0.8
    assert loss.tolist() == [approx([-1.2, 0.8])] and clipped.tolist() == [[1.0, 1.0]]


def test_grpo_loss_with_ratios_clipping_and_kl_by_hand():
    ratios = [[1.5, 0.9], [0.5, 1.0]]
    logps = torch.log(t(ratios))
    old = ref = t([[0.0, 0.0], [0.0, 0.0]])
    mask = t([[1, 1], [1, 0]])
    loss, metrics = grpo_loss(logps, old, ref, t([1.0, -1.0]), mask, clip=0.2, beta=0.1)
    # per token -min(r A, clip(r) A): row A = +1: -1.2 (clipped), -0.9; row A = -1: +0.8 (clipped)
    surrogate = [-1.2, -0.9, 0.8]
    kl = [1 / r + math.log(r) - 1 for r in (1.5, 0.9, 0.5)]  # k3 with ref logp 0
    expected = sum(s + 0.1 * k for s, k in zip(surrogate, kl)) / 3
    assert loss.item() == approx(expected)
    assert metrics["clip_ratio"].item() == approx(2 / 3)
    assert metrics["kl"].item() == approx(sum(kl) / 3)
    for no_kl in (dict(ref_logps=None, beta=0.1), dict(ref_logps=ref, beta=0.0)):
        loss, metrics = grpo_loss(
            logps, old, no_kl["ref_logps"], t([1.0, -1.0]), mask, clip=0.2, beta=no_kl["beta"]
        )
        assert loss.item() == approx(sum(surrogate) / 3) and "kl" not in metrics


def test_gae_with_discount_and_padding_by_hand():
    rewards = t([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = t([[0.5, 0.6, 0.7], [1.0, 1.0, 9.0]])  # 9.0 is padding: treated as 0
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: d2 = 1 - 0.7 = 0.3; d1 = 0.9 * 0.7 - 0.6 = 0.03; d0 = 0.9 * 0.6 - 0.5 = 0.04
    a2 = 0.3
    a1 = 0.03 + 0.9 * 0.8 * a2  # 0.246
    a0 = 0.04 + 0.9 * 0.8 * a1  # 0.21712
    assert adv[0].tolist() == approx([a0, a1, a2])
    assert returns[0].tolist() == approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])
    # row 1 ends at t = 1: d1 = 2 - 1 = 1 (no value after the end); d0 = 0.9 * 1 - 1 = -0.1
    assert adv[1].tolist() == approx([-0.1 + 0.72 * 1.0, 1.0, 0.0])
    assert returns[1].tolist() == approx([0.62 + 1.0, 2.0, 0.0])


def test_clipped_value_loss_by_hand():
    values = t([[1.0, 2.5, 50.0]])
    old = t([[0.5, 2.0, 0.0]])
    returns = t([[0.0, 3.0, 0.0]])
    mask = t([[1, 1, 0]])
    # token 0: max((1 - 0)^2, (0.5 + 0.2 - 0)^2) = 1; token 1: max(0.25, (2.2 - 3)^2 = 0.64)
    loss = clipped_value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == approx(0.5 * (1.0 + 0.64) / 2)
