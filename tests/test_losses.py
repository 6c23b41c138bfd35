"""The VLMQ losses on hand-built tensors, every expected value worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from learner.losses import (
    advantage_unit,
    expectile_loss,
    filter_weights,
    q_floor,
    state_values,
    td_targets,
    vlmq_losses,
)
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


def _turn(v_target, last_discount, lam=0.0):
    # one turn of 3 generated tokens; V_target at s_1, s_2, s_3 is 1, 2, 3; r_t = 1 on the last token
    v = torch.tensor([v_target])
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    discounts = torch.tensor([[1.0, 1.0, last_discount]])
    last = torch.tensor([[False, False, True]])
    return td_targets(v, rewards, discounts, last, next_v=torch.tensor([5.0]), lam=lam)


def test_td_targets_at_turn_boundary():
    # k < n: y_k = V_target(s_{k+1}) = 2, 3; k = n: y = r + gamma V_target(s_{t+1,1}) = 1 + 0.9 * 5 = 5.5
    assert _turn([1.0, 2.0, 3.0], 0.9)[0].tolist() == pytest.approx([2.0, 3.0, 5.5])


def test_td_targets_at_termination():
    # done: y_n = r_t = 1, the next prompt's value is ignored
    assert _turn([1.0, 2.0, 3.0], 0.0)[0].tolist() == pytest.approx([2.0, 3.0, 1.0])


def test_td_lambda_inside_a_turn():
    # y_3 = 1 + 0.9 * 5 = 5.5 whatever lambda; lambda 1: every token regresses on it
    assert _turn([1.0, 2.0, 3.0], 0.9, lam=1.0)[0].tolist() == pytest.approx([5.5, 5.5, 5.5])
    # lambda 0.5: y_2 = 0.5 V(s_3) + 0.5 y_3 = 0.5 * 3 + 0.5 * 5.5 = 4.25; y_1 = 0.5 * 2 + 0.5 * 4.25 = 3.125
    assert _turn([1.0, 2.0, 3.0], 0.9, lam=0.5)[0].tolist() == pytest.approx([3.125, 4.25, 5.5])
    # termination: lambda 1 gives every token the reward alone
    assert _turn([1.0, 2.0, 3.0], 0.0, lam=1.0)[0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_td_lambda_one_ignores_padding_and_the_next_row():
    # row 0: 2 tokens then padding (V 100 there must not leak); row 1: 3 tokens
    v = torch.tensor([[1.0, 2.0, 100.0], [4.0, 5.0, 6.0]])
    rewards = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, 2.0]])
    discounts = torch.tensor([[1.0, 0.9, 1.0], [1.0, 1.0, 0.0]])
    last = torch.tensor([[False, True, False], [False, False, True]])
    y = td_targets(v, rewards, discounts, last, next_v=torch.tensor([10.0, 7.0]), lam=1.0)
    assert y[0, :2].tolist() == pytest.approx([8.0, 8.0])  # -1 + 0.9 * 10
    assert y[1].tolist() == pytest.approx([2.0, 2.0, 2.0])  # terminated: r alone


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
    cfg = LearnerConfig(filter="binary", critic_coef=0.5, td_lambda=0.0, value="policy")
    loss, m = vlmq_losses(
        logits, q, q_target, actions, mask, last, rewards, discounts, torch.tensor([9.0]), cfg
    )
    # y = [3, 3, r=1 (done)]; Q(s,a) = [2, 0, 2]; squared errors 1, 9, 1, in units of the reward
    # range U = 2 -> critic loss 11 / (3 * 4)
    assert m["critic_loss"].item() == pytest.approx(11 / 12)
    # kept tokens 0 and 2 (A = +1), log pi = ln 1/2 each -> actor loss = 2 ln 2 / 3
    assert m["actor_loss"].item() == pytest.approx(2 * math.log(2) / 3)
    assert m["filter_rate"].item() == pytest.approx(2 / 3)
    assert m["q"].item() == pytest.approx(4 / 3)
    assert m["v"].item() == pytest.approx(1.0)
    assert m["adv"].item() == pytest.approx(1 / 3)
    assert m["td_error"].item() == pytest.approx((1 + 3 + 1) / 3)
    assert loss.item() == pytest.approx(2 * math.log(2) / 3 + 0.5 * 11 / 12)


def test_losses_with_the_value_head_by_hand():
    """value "expectile": V is the head's output in targets and advantages, the head regresses on the
    target Q of the data's tokens, and the advantage is that target Q minus V (IQL); the
    whole-vocabulary sum pi Q plays no part."""
    logits, q, actions, mask, last, rewards, discounts = _two_action_batch()
    q_target = torch.tensor([1.0, 3.0]).expand(1, 1, 4, 2)  # Q_target(s, a) = 3, 1, 3 on the data
    v_head = torch.tensor([[1.5, 1.5, 1.5, 0.0]], requires_grad=True)
    cfg = LearnerConfig(filter="binary", critic_coef=1.0, td_lambda=0.0, value="expectile", expectile=0.5)
    loss, m = vlmq_losses(
        logits, q, q_target, actions, mask, last, rewards, discounts, torch.tensor([9.0]), cfg, v_head=v_head
    )
    # y = [V(s_2), V(s_3), r (done)] = [1.5, 1.5, 1]; Q(s,a) = [2, 0, 2]: squared errors 0.25, 2.25, 1,
    # over U^2 = 4
    assert m["critic_loss"].item() == pytest.approx(3.5 / 12)
    # Q_target(s,a) - V = 1.5, -0.5, 1.5; expectile 0.5: 0.5 * (2.25 + 0.25 + 2.25) / (3 * 4)
    assert m["value_loss"].item() == pytest.approx(0.5 * 4.75 / 12)
    # A = u: tokens 0 and 2 kept (A / 2 = 0.75 > 0), token 1 dropped
    assert m["adv"].item() == pytest.approx(2.5 / 3)
    assert m["v"].item() == pytest.approx(1.5)
    assert m["filter_rate"].item() == pytest.approx(2 / 3)
    loss.backward()
    # dL_value/dV = -2 * 0.5 * (Q_target - V) / (3 * 4) per token, times critic_coef 1; padding gets none
    assert v_head.grad[0].tolist() == pytest.approx([-0.125, 0.5 / 12, -0.125, 0.0])


def test_expectile_loss_weights_each_side():
    u = torch.tensor([-2.0, 1.0, 0.0])
    assert expectile_loss(u, 0.7).tolist() == pytest.approx([0.3 * 4, 0.7 * 1, 0.0])
    assert expectile_loss(u, 0.5).tolist() == pytest.approx([2.0, 0.5, 0.0])


def test_value_expectile_without_the_head_is_a_clear_error():
    logits, q, actions, mask, last, rewards, discounts = _two_action_batch()
    with pytest.raises(ValueError, match="needs the value head"):
        vlmq_losses(logits, q, q, actions, mask, last, rewards, discounts, torch.zeros(1), LearnerConfig())


def test_binary_filter_keeps_exactly_tokens_above_threshold():
    adv = torch.tensor([-1.0, 0.0, 0.49, 0.5, 0.51, 3.0])
    unit = [0.0, 1.0]  # a reward range of width 1: A is read as it is
    w = filter_weights(adv, LearnerConfig(filter="binary", threshold=0.5, reward_range=unit))
    assert w.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert filter_weights(adv, LearnerConfig(filter="binary")).tolist() == [0, 0, 1, 1, 1, 1]


def test_threshold_is_in_units_of_the_reward_range():
    # rewards in [-1, 9] (width 10), threshold 0.1: A must exceed 1; the same filter with rewards x10
    adv = torch.tensor([0.5, 0.99, 1.01, 4.0])
    cfg = LearnerConfig(filter="binary", threshold=0.1, reward_range=[-1.0, 9.0])
    assert advantage_unit(cfg) == 10.0
    assert filter_weights(adv, cfg).tolist() == [0, 0, 1, 1]
    scaled = LearnerConfig(filter="binary", threshold=0.1, reward_range=[-1.0, 9.0], reward_scale=10.0)
    assert filter_weights(adv * 10, scaled).tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("value", ["policy", "expectile"])
def test_every_loss_is_in_units_of_the_reward_range(value):
    """Rewards, Q, V and the range all x11 (a range of 22 against 2): the
    critic, value and actor losses are unchanged, so critic_coef weighs the same in every env."""
    logits, q, actions, mask, last, rewards, discounts = _two_action_batch()
    q_target = torch.tensor([1.0, 3.0]).expand(1, 1, 4, 2)
    v_head = torch.tensor([[1.5, 1.5, 1.5, 0.0]])

    def run(c):
        cfg = LearnerConfig(filter="exp", critic_coef=4.0, value=value, reward_range=[-c, c])
        return vlmq_losses(
            logits,
            q * c,
            q_target * c,
            actions,
            mask,
            last,
            rewards * c,
            discounts,
            torch.tensor([9.0 * c]),
            cfg,
            v_head=v_head * c,
        )

    (loss1, m1), (loss11, m11) = run(1.0), run(11.0)
    for k in ("critic_loss", "value_loss", "actor_loss", "filter_rate"):
        assert m11[k].item() == pytest.approx(m1[k].item(), rel=1e-6), k
    assert loss11.item() == pytest.approx(loss1.item(), rel=1e-6)
    assert m1["critic_loss"].item() > 0


def test_q_floor_is_the_lowest_return():
    assert q_floor(LearnerConfig(gamma=0.9)) == pytest.approx(-10.0)  # -1 / (1 - 0.9)
    assert q_floor(LearnerConfig(gamma=0.0)) == pytest.approx(-1.0)
    assert q_floor(LearnerConfig(gamma=0.5, reward_range=[-2.0, 1.0], reward_scale=0.5)) == pytest.approx(
        -2.0
    )


def test_exp_filter_is_clipped():
    cfg = LearnerConfig(filter="exp", beta=2.0, w_max=20.0, reward_range=[0.0, 1.0])
    w = filter_weights(torch.tensor([-1.0, 0.0, 1.0, 10.0]), cfg)
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
    cfg = LearnerConfig(filter="none", critic_coef=0.0, value="policy")
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
        LearnerConfig(critic_coef=1.0, td_lambda=0.0, value="policy", filter="binary"),
    )
    loss.backward()
    assert q_target.grad is None
    # dL_critic/dQ(s,a) = 2 (Q - y) / (3 U^2) on the taken actions only; y = [0, 0, 1], U = 2
    assert torch.allclose(q.grad[0, 0], torch.tensor([[0, 1 / 3], [0, 0], [0, 1 / 6], [0, 0]]))
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
    v_head = torch.randn(4, 3, generator=g)
    cfg = LearnerConfig(td_lambda=0.5)
    whole, mw = vlmq_losses(
        logits, q, qt, actions, mask, last, rewards, discounts, next_v, cfg, v_head=v_head
    )
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
            v_head=v_head[s],
        )
        for s in (slice(0, 2), slice(2, 4))
    ]
    assert (parts[0][0] + parts[1][0]).item() == pytest.approx(whole.item(), abs=1e-6)
    for key in mw:
        assert (parts[0][1][key] + parts[1][1][key]).item() == pytest.approx(mw[key].item(), abs=1e-6)


@pytest.mark.parametrize("value", ["policy", "expectile"])
@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_critic_converges_to_exact_q_on_a_three_state_chain(lam, value):
    """A -> B -> C -> end, gamma 0.9, one turn per state of two tokens [a, 0]: the first token a in {0, 1}
    earns r = a, the second is always 0. pi is uniform at the first token and sure at the second, so
    V_C = 0.5, Q_C(a) = a; V_B = 0.5 + 0.9 * 0.5 = 0.95, Q_B(a) = a + 0.45; Q_A(a) = a + 0.9 * 0.95.
    A tabular critic (tensors only) trained with the project's losses and a Polyak target gets there
    from the pessimistic start, with one-step (lambda 0) and turn-level (lambda 1) targets alike, and with
    V as pi's average of Q or as a value head fit by expectile 0.5 (the data's tokens are pi's here)."""
    gamma, tau = 0.9, 0.2
    cfg = LearnerConfig(gamma=gamma, td_lambda=lam, filter="none", critic_coef=1.0, value=value)
    exact = torch.tensor([[0.855, 1.855], [0.45, 1.45], [0.0, 1.0]])  # Q_s(a), states A, B, C
    # q_first[s, a']: Q at a turn's first token; q_second[s, a, a']: at its second token, after a
    q_first = torch.full((3, 2), q_floor(cfg), requires_grad=True)
    q_second = torch.full((3, 2, 2), q_floor(cfg), requires_grad=True)
    targets = [q_first.detach().clone(), q_second.detach().clone()]
    v_first = torch.full((3,), q_floor(cfg), requires_grad=True)  # value head at a turn's first token
    v_second = torch.full((3, 2), q_floor(cfg), requires_grad=True)  # and at its second, after a
    rows = [(s, a) for s in range(3) for a in range(2)]  # one turn per (state, first token)
    S, A = torch.tensor([s for s, _ in rows]), torch.tensor([a for _, a in rows])
    actions = torch.stack([A, torch.zeros_like(A)], 1)
    logits = torch.tensor([[0.0, 0.0], [0.0, -50.0]]).expand(len(rows), 2, 2)
    mask = torch.ones(len(rows), 2)
    last = torch.tensor([[False, True]]).expand(len(rows), 2)
    rewards = torch.stack([torch.zeros(len(rows)), A.float()], 1)
    discounts = torch.stack([torch.ones(len(rows)), torch.where(S < 2, gamma, 0.0)], 1)
    opt = torch.optim.Adam([q_first, q_second, v_first, v_second], lr=0.1)

    def heads(first, second):  # (1, rows, 2 tokens, vocab 2)
        return torch.stack([first[S], second[S, A]], 1)[None]

    for _ in range(600):
        q, qt = heads(q_first, q_second), heads(*targets)
        v_head = torch.stack([v_first[S], v_second[S, A]], 1)
        # next_v = V at the next state's first token (state s + 1), 0 after C (terminated)
        if value == "policy":
            v_next = state_values(torch.zeros(3, 1, 2), targets[0][None, :, None])[:, 0]  # uniform pi
        else:
            v_next = v_first.detach()
        next_v = torch.where(S < 2, v_next[(S + 1).clamp(max=2)], 0.0)
        loss, _ = vlmq_losses(
            logits, q, qt, actions, mask, last, rewards, discounts, next_v, cfg, v_head=v_head
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for t, o in zip(targets, (q_first, q_second)):
                t.lerp_(o, tau)
    assert torch.allclose(q_first.detach(), exact, atol=1e-3)
    assert torch.allclose(q_second.detach()[S, A, 0], exact[S, A], atol=1e-3)
    if value == "expectile":  # V_s = mean over the data's first tokens
        assert torch.allclose(v_first.detach(), exact.mean(1), atol=1e-3)
