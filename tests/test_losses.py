"""The VLMQ losses on hand-built tensors, every expected value worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from learner.losses import filter_weights, state_values, td_targets, vlmq_losses
from vlmq.config import LearnerConfig


def test_state_value_is_policy_weighted_mean_of_ensemble():
    # pi = softmax([0, ln 3]) = [1/4, 3/4]; heads [1, 3] and [3, 5] -> mean Q [2, 4]; V = 2/4 + 12/4 = 3.5
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    q = torch.tensor([[[[1.0, 3.0]]], [[[3.0, 5.0]]]])
    assert state_values(logits, q).item() == pytest.approx(3.5)


def test_state_value_has_no_gradient_through_policy():
    logits = torch.zeros(1, 1, 2, requires_grad=True)
    q = torch.tensor([[[[1.0, 3.0]]]], requires_grad=True)
    state_values(logits, q).sum().backward()
    assert logits.grad is None
    assert q.grad.tolist() == [[[[0.5, 0.5]]]]


def _turn(v_target, last_discount):
    # one turn of 3 generated tokens; V_target at s_1, s_2, s_3 is 1, 2, 3; r_t = 1 on the last token
    v = torch.tensor([v_target])
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    discounts = torch.tensor([[1.0, 1.0, last_discount]])
    last = torch.tensor([[False, False, True]])
    return td_targets(v, rewards, discounts, last, next_v=torch.tensor([5.0]))


def test_td_targets_at_turn_boundary():
    # k < n: y_k = V_target(s_{k+1}) = 2, 3; k = n: y = r + gamma V_target(s_{t+1,1}) = 1 + 0.9 * 5 = 5.5
    assert _turn([1.0, 2.0, 3.0], 0.9)[0].tolist() == pytest.approx([2.0, 3.0, 5.5])


def test_td_targets_at_termination():
    # done: y_n = r_t = 1, the next prompt's value is ignored
    assert _turn([1.0, 2.0, 3.0], 0.0)[0].tolist() == pytest.approx([2.0, 3.0, 1.0])


def test_td_targets_with_padding():
    # turn 2 has 2 tokens (its last at k=1) and padding at k=2: the padded V must not leak into k=1
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 7.0, 100.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    discounts = torch.tensor([[1.0, 1.0, 0.9], [1.0, 0.5, 1.0]])
    last = torch.tensor([[False, False, True], [False, True, False]])
    y = td_targets(v, rewards, discounts, last, next_v=torch.tensor([5.0, 2.0]))
    # turn 2: y_0 = V(s_1) = 7; y_1 = -1 + 0.5 * 2 = 0
    assert y[1, :2].tolist() == pytest.approx([7.0, 0.0])


def test_truncation_bootstraps_in_batch_discounts():
    """The batch builder turns (terminated, truncated) into the last token's discount."""
    from learner.batch import last_token_discount

    assert last_token_discount(terminated=False, truncated=False, gamma=0.9) == pytest.approx(0.9)
    assert last_token_discount(terminated=False, truncated=True, gamma=0.9) == pytest.approx(0.9)
    assert last_token_discount(terminated=True, truncated=False, gamma=0.9) == 0.0
    assert last_token_discount(terminated=True, truncated=True, gamma=0.9) == 0.0


def _two_action_batch():
    """4 tokens, vocab 2, uniform policy, one head Q = [0, 2] everywhere -> V = 1 at every state.
    Actions 1, 0, 1, 0 have A = +1, -1, +1, -1; the last token is padding."""
    logits = torch.zeros(1, 4, 2, requires_grad=True)
    q = torch.tensor([0.0, 2.0]).expand(1, 1, 4, 2).clone().requires_grad_(True)
    actions = torch.tensor([[1, 0, 1, 0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    last = torch.tensor([[False, False, True, False]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    discounts = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    return logits, q, actions, mask, last, rewards, discounts


def test_losses_by_hand():
    logits, q, actions, mask, last, rewards, discounts = _two_action_batch()
    q_target = torch.full((1, 1, 4, 2), 3.0)  # V_target = 3 everywhere
    cfg = LearnerConfig(filter="binary", critic_coef=0.5)
    loss, m = vlmq_losses(
        logits, q, q_target, actions, mask, last, rewards, discounts, torch.tensor([9.0]), cfg
    )
    # y = [3, 3, r=1 (done)]; Q(s,a) = [2, 0, 2]; squared errors 1, 9, 1 -> critic loss 11/3
    assert m["critic_loss"].item() == pytest.approx(11 / 3)
    # kept tokens 0 and 2 (A = +1), log pi = ln 1/2 each -> actor loss = 2 ln 2 / 3
    assert m["actor_loss"].item() == pytest.approx(2 * math.log(2) / 3)
    assert m["filter_rate"].item() == pytest.approx(2 / 3)
    assert m["q"].item() == pytest.approx(4 / 3)
    assert m["v"].item() == pytest.approx(1.0)
    assert m["adv"].item() == pytest.approx(1 / 3)
    assert m["td_error"].item() == pytest.approx((1 + 3 + 1) / 3)
    assert loss.item() == pytest.approx(2 * math.log(2) / 3 + 0.5 * 11 / 3)


def test_binary_filter_keeps_exactly_tokens_above_threshold():
    adv = torch.tensor([-1.0, 0.0, 0.49, 0.5, 0.51, 3.0])
    w = filter_weights(adv, LearnerConfig(filter="binary", threshold=0.5))
    assert w.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert filter_weights(adv, LearnerConfig(filter="binary")).tolist() == [0, 0, 1, 1, 1, 1]


def test_exp_filter_is_clipped():
    w = filter_weights(
        torch.tensor([-1.0, 0.0, 1.0, 10.0]), LearnerConfig(filter="exp", beta=2.0, w_max=20.0)
    )
    assert w.tolist() == pytest.approx([math.exp(-2), 1.0, math.exp(2), 20.0])


def test_unknown_filter_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown filter 'bogus'"):
        filter_weights(torch.zeros(1), LearnerConfig(filter="bogus"))


def test_sft_mode_equals_masked_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    q = torch.randn(2, 2, 5, 7, generator=g)
    actions = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float)
    last = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    zeros = torch.zeros(2, 5)
    cfg = LearnerConfig(filter="none", critic_coef=0.0)
    loss, m = vlmq_losses(logits, q, q, actions, mask, last, zeros, zeros + 1, torch.zeros(2), cfg)
    ce = F.cross_entropy(logits[mask.bool()], actions[mask.bool()])
    assert loss.item() == pytest.approx(ce.item(), abs=1e-6)
    assert m["filter_rate"].item() == 1.0
    (g1,) = torch.autograd.grad(loss, logits)
    (g2,) = torch.autograd.grad(ce, logits)
    assert torch.allclose(g1, g2, atol=1e-7)


def test_critic_gradient_reaches_only_the_critic_and_actor_only_the_policy():
    logits, q, actions, mask, last, rewards, discounts = _two_action_batch()
    q_target = torch.zeros(1, 1, 4, 2, requires_grad=True)
    loss, _ = vlmq_losses(
        logits,
        q,
        q_target,
        actions,
        mask,
        last,
        rewards,
        discounts,
        torch.zeros(1),
        LearnerConfig(critic_coef=1.0),
    )
    loss.backward()
    assert q_target.grad is None
    # dL_critic/dQ(s,a) = 2 (Q - y) / 3 on the taken actions only; y = [0, 0, 1]
    assert torch.allclose(q.grad[0, 0], torch.tensor([[0, 4 / 3], [0, 0], [0, 2 / 3], [0, 0]]))
    # actor: kept tokens 0 and 2, d(-log pi(a))/dlogits = pi - onehot(a) = [0.5, -0.5], over 3 tokens
    assert torch.allclose(logits.grad[0], torch.tensor([[1 / 6, -1 / 6], [0, 0], [1 / 6, -1 / 6], [0, 0]]))


def test_denominator_splits_a_batch_exactly():
    """Two halves with the global token count as denominator sum to the whole batch's loss."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 5, generator=g)
    q = torch.randn(2, 4, 3, 5, generator=g)
    qt = torch.randn(2, 4, 3, 5, generator=g)
    actions = torch.randint(0, 5, (4, 3), generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float)
    last = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.bool)
    rewards = last.float()
    discounts = torch.where(last, 0.9, 1.0)
    next_v = torch.randn(4, generator=g)
    cfg = LearnerConfig()
    whole, mw = vlmq_losses(logits, q, qt, actions, mask, last, rewards, discounts, next_v, cfg)
    parts = [
        vlmq_losses(
            logits[s],
            q[:, s],
            qt[:, s],
            actions[s],
            mask[s],
            last[s],
            rewards[s],
            discounts[s],
            next_v[s],
            cfg,
            denom=9.0,
        )
        for s in (slice(0, 2), slice(2, 4))
    ]
    assert (parts[0][0] + parts[1][0]).item() == pytest.approx(whole.item(), abs=1e-6)
    for key in mw:
        assert (parts[0][1][key] + parts[1][1][key]).item() == pytest.approx(mw[key].item(), abs=1e-6)
