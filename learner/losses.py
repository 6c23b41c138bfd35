"""The VLMQ losses (DESIGN.md 1.2-1.3), on token-aligned tensors.

Every tensor is indexed by (turn b, generated token k): position k holds the state s_{t,k} (the hidden
state whose logits predict generated token k) and the action a = y_{t,k}. Padding has mask 0.

    logits   (B, K, V)     policy logits at s_{t,k}
    q        (C, B, K, V)  online critic heads at s_{t,k}
    q_target (C, B, K, V)  EMA target heads at s_{t,k} (no grad)
    actions  (B, K)        y_{t,k}
    mask     (B, K)        1 on generated tokens
    last     (B, K)        1 on the last generated token k = n
    rewards  (B, K)        r_t on the last token, 0 elsewhere (already times reward_scale)
    discounts(B, K)        gamma * (1 - done_t) on the last token, 1 elsewhere
    next_v   (B,)          V_target(s_{t+1,1}) from the no-grad pass over the next turn's prompt

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


def td_targets(
    v_target: torch.Tensor,
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    last: torch.Tensor,
    next_v: torch.Tensor,
) -> torch.Tensor:
    """y_k = V_target(s_{k+1}) for k < n;  y_n = r_t + gamma (1 - done_t) V_target(s_{t+1,1})."""
    v_next_token = torch.cat([v_target[:, 1:], torch.zeros_like(v_target[:, :1])], dim=1)
    bootstrap = torch.where(last.bool(), next_v[:, None].to(v_target.dtype), v_next_token)
    return rewards + discounts * bootstrap


def filter_weights(adv: torch.Tensor, cfg: LearnerConfig) -> torch.Tensor:
    """AFSFT weight per token: 1[A > threshold], min(exp(beta A), w_max), or 1 (SFT)."""
    if cfg.filter == "binary":
        return (adv > cfg.threshold).float()
    if cfg.filter == "exp":
        return torch.clamp(torch.exp(cfg.beta * adv), max=cfg.w_max)
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_actor + critic_coef * L_critic, plus the metrics DESIGN.md asks to log every step."""
    mask = mask.float()
    n = mask.sum().clamp(min=1.0) if denom is None else denom
    logits = logits.float()
    q = q.float()

    # Critic: Q(s_k, y_k) of every head against one TD target from the target heads (no grad).
    with torch.no_grad():
        v_target = state_values(logits, q_target)
        y = td_targets(v_target, rewards.float(), discounts.float(), last, next_v.float())
    q_sa = q.gather(-1, actions[None, :, :, None].expand(q.shape[0], -1, -1, 1)).squeeze(-1)  # (C, B, K)
    critic_loss = (((q_sa - y) ** 2).mean(0) * mask).sum() / n

    # Actor: advantage from the online heads (ensemble mean), no grad; filtered log-likelihood.
    with torch.no_grad():
        v = state_values(logits, q)
        adv = q_sa.mean(0) - v
        w = filter_weights(adv, cfg)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, actions[..., None]).squeeze(-1)
    actor_loss = -(w * logp * mask).sum() / n

    loss = actor_loss + cfg.critic_coef * critic_loss
    with torch.no_grad():
        metrics = {
            "actor_loss": actor_loss.detach(),
            "critic_loss": critic_loss.detach(),
            "filter_rate": (w * mask).sum() / n,
            "q": (q_sa.mean(0) * mask).sum() / n,
            "v": (v * mask).sum() / n,
            "adv": (adv * mask).sum() / n,
            "td_error": ((q_sa.mean(0) - y).abs() * mask).sum() / n,
            "tokens": mask.sum(),
        }
    return loss, metrics
