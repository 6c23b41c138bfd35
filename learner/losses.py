"""The VLMQ losses (docs/design.md, sections 1.2-1.3), on token-aligned tensors.

Every tensor is indexed by (turn b, generated token k): position k holds the state s_{t,k} (the hidden
state whose logits predict generated token k) and the action a = y_{t,k}. Padding has mask 0.

    logits   (B, K, V)     policy logits at s_{t,k}
    q        (C, B, K, V)  online critic heads at s_{t,k}
    q_target (C, B, K, V)  EMA target heads at s_{t,k} (no grad)
    v_head   (B, K)        the value head at s_{t,k} (trained only when cfg.value is "expectile")
    actions  (B, K)        y_{t,k}
    mask     (B, K)        1 on generated tokens
    last     (B, K)        1 on the last generated token k = n
    rewards  (B, K)        r_t on the last token, 0 elsewhere (already times reward_scale)
    discounts(B, K)        gamma * (1 - done_t) on the last token, 1 elsewhere
    next_v   (B,)          V_target(s_{t+1,1}) from the no-grad pass over the next turn's prompt

Units: an advantage is read in units of one turn's reward range (`advantage_unit`), so `threshold`
and `beta` mean the same in every env; the critic's and value head's squared errors are read in the same
unit, so `critic_coef` weighs them against the actor's nats alike whatever the reward's scale; with
`value: policy` the critic heads start at `q_floor`.

Sums are divided by `denom` (default: the number of generated tokens here). Data-parallel workers pass
the global token count, so their losses and metrics add up to those of the whole batch.
"""

from __future__ import annotations

import torch

from vlmq.config import LearnerConfig


def state_values(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """V(s) = sum_a pi(a|s) Q(s,a) with pi at temperature 1 and Q the ensemble mean; no grad through pi."""
    pi = torch.softmax(logits.detach().float(), dim=-1)
    return (pi * q.float().mean(0)).sum(-1)


def values(logits: torch.Tensor, q: torch.Tensor, v_head: torch.Tensor, cfg: LearnerConfig) -> torch.Tensor:
    """V(s) as cfg.value says, no grad: "policy" sums pi Q over the whole vocabulary, where the Q of
    tokens the data never shows leaks in; "expectile" is the value head, fit to the data's own Q."""
    if cfg.value == "policy":
        return state_values(logits, q)
    return v_head.detach().float()


def expectile_loss(u: torch.Tensor, tau: float) -> torch.Tensor:
    """|tau - 1(u < 0)| u^2 (IQL): tau 0.5 fits the mean, so V is the data's value; higher, its upper range."""
    return torch.abs(tau - (u < 0).float()) * u**2


def advantage_unit(cfg: LearnerConfig) -> float:
    """The range of one turn's reward after reward_scale: what one action can change the return by."""
    lo, hi = cfg.reward_range
    return (hi - lo) * cfg.reward_scale


def q_floor(cfg: LearnerConfig) -> float:
    """reward_min / (1 - gamma), scaled: no return is lower. With value "policy" the critic heads start
    here, so a token the data never shows looks as bad as the worst outcome and cannot lift sum_a pi Q."""
    return cfg.reward_range[0] * cfg.reward_scale / (1.0 - cfg.gamma)


def td_targets(
    v_target: torch.Tensor,
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    last: torch.Tensor,
    next_v: torch.Tensor,
    lam: float = 0.0,
) -> torch.Tensor:
    """The lambda-return inside a turn, one-step at its end:
    y_n = r_t + gamma (1 - done_t) V_target(s_{t+1,1});  y_k = (1 - lam) V_target(s_{k+1}) + lam y_{k+1}.
    lam 0 is the one-step target of every token; lam 1 regresses every token of a turn on y_n."""
    last = last.bool()
    y = torch.zeros_like(v_target)
    ahead = torch.zeros_like(v_target[:, 0])  # (1 - lam) V(s_{k+1}) + lam y_{k+1}, from the right
    for k in reversed(range(v_target.shape[1])):
        boot = torch.where(last[:, k], next_v.to(v_target.dtype), ahead)
        y[:, k] = rewards[:, k] + discounts[:, k] * boot
        ahead = (1 - lam) * v_target[:, k] + lam * y[:, k]
    return y


def filter_weights(adv: torch.Tensor, cfg: LearnerConfig) -> torch.Tensor:
    """AFSFT weight per token: 1[A > threshold], min(exp(beta A), w_max), or 1 (SFT); A in advantage units."""
    a = adv / advantage_unit(cfg)
    if cfg.filter == "binary":
        return (a > cfg.threshold).float()
    if cfg.filter == "exp":
        return torch.clamp(torch.exp(cfg.beta * a), max=cfg.w_max)
    if cfg.filter == "none":
        return torch.ones_like(adv)
    raise ValueError(f"unknown filter {cfg.filter!r}; expected binary | exp | none")


def vlmq_losses(
    logits: torch.Tensor,
    q: torch.Tensor,
    q_target: torch.Tensor,
    actions: torch.Tensor,
    mask: torch.Tensor,
    last: torch.Tensor,
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    next_v: torch.Tensor,
    cfg: LearnerConfig,
    denom: float | torch.Tensor | None = None,
    v_head: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_actor + critic_coef * (L_critic + L_value), plus the per-step metrics (docs/design.md)."""
    mask = mask.float()
    n = mask.sum().clamp(min=1.0) if denom is None else denom
    logits = logits.float()
    q = q.float()
    if v_head is None:
        if cfg.value != "policy":
            raise ValueError(f"learner.value {cfg.value!r} needs the value head's outputs (v_head)")
        v_head = torch.zeros_like(mask)

    # Critic: Q(s_k, y_k) of every head against one TD target from the target heads (no grad).
    take = actions[None, :, :, None].expand(q.shape[0], -1, -1, 1)
    with torch.no_grad():
        v_target = values(logits, q_target, v_head, cfg)
        y = td_targets(v_target, rewards.float(), discounts.float(), last, next_v.float(), cfg.td_lambda)
        q_sa_target = q_target.float().gather(-1, take).squeeze(-1).mean(0)  # (B, K)
    q_sa = q.gather(-1, take).squeeze(-1)  # (C, B, K)
    unit = advantage_unit(cfg)
    critic_loss = ((((q_sa - y) / unit) ** 2).mean(0) * mask).sum() / n

    # Value head: the expectile of the target Q over the data's tokens (only where cfg.value uses it).
    if cfg.value == "expectile":
        value_loss = (expectile_loss((q_sa_target - v_head.float()) / unit, cfg.expectile) * mask).sum() / n
    else:
        value_loss = torch.zeros((), device=q.device)

    # Actor: advantage (ensemble mean, no grad); filtered log-likelihood. The value head is fit to the
    # target heads' Q, so its advantage is taken from them too (IQL): online Q minus a V that lags it
    # would drop every token at once whenever the online heads move.
    with torch.no_grad():
        v = values(logits, q, v_head, cfg)
        adv = (q_sa.mean(0) if cfg.value == "policy" else q_sa_target) - v
        w = filter_weights(adv, cfg)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, actions[..., None]).squeeze(-1)
    actor_loss = -(w * logp * mask).sum() / n

    loss = actor_loss + cfg.critic_coef * (critic_loss + value_loss)
    with torch.no_grad():
        metrics = {
            "actor_loss": actor_loss.detach(),
            "critic_loss": critic_loss.detach(),
            "value_loss": value_loss.detach(),
            "filter_rate": (w * mask).sum() / n,
            "q": (q_sa.mean(0) * mask).sum() / n,
            "v": (v * mask).sum() / n,
            "adv": (adv * mask).sum() / n,
            "td_error": ((q_sa.mean(0) - y).abs() * mask).sum() / n,
            "tokens": mask.sum(),
        }
    return loss, metrics
