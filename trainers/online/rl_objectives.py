"""Online RL objectives as pure functions of per-token log-probs and masks (the offline ones are in
trainers/offline/objectives.py). Each variant is one function and one entry in a map, so a new one is one edit.

Shapes: rewards and advantages (N,) with N = prompts × G (a prompt's G completions are consecutive); per-token
tensors (B, T) with ``mask`` 1 on completion tokens that are trained. Conventions follow TRL 1.16's
GRPOTrainer / RLOOTrainer (checked numerically in tests/test_rl_objectives.py); docs/online_rl.md gives each
formula with its paper.

    advantages:  ADVANTAGES[name](rewards, G, ...)            grpo | rloo | reinforce_pp | remax (baseline=)
    surrogate:   SURROGATES[name](ratio, logps, adv, ...)    clip | cispo             (per-token loss)
    aggregation: AGGREGATIONS[name](per_token, mask, ...)    grpo | bnpo | dr_grpo | dapo
    KL:          KL_ESTIMATORS[name](logps, ref_logps)       k1 | k2 | k3
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

EPS = 1e-4  # added to a std before dividing (TRL's constant)


# ------------------------------------------------------------------------------------------ advantages
def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def _nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Sample standard deviation (n - 1) ignoring NaNs, as TRL's ``nanstd``."""
    mean = torch.nanmean(x, dim=dim, keepdim=True) if dim is not None else torch.nanmean(x)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=keepdim) if dim is not None else (~torch.isnan(x)).sum()
    var = torch.nansum((x - mean) ** 2, dim=dim, keepdim=keepdim) if dim is not None else torch.nansum((x - mean) ** 2)
    return torch.sqrt(var / (count - 1).clamp(min=1))


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO (Shao et al. 2024, arXiv:2402.03300, §4.1.2): A_i = (r_i - mean(group)) / (std + ε).

    ``scale``: ``group`` divides by the group's std (GRPO); ``batch`` by the whole batch's std (as REINFORCE++
    and TRL's ``scale_rewards="batch"``); ``none`` does not divide (Dr. GRPO, Liu et al. 2025,
    arXiv:2503.20783: the std makes easy and hard prompts weigh more). A NaN reward (null: the data or the
    checker failed) is left out of its group's statistics and gets advantage 0.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    grouped = _grouped(rewards, group_size)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    adv = grouped - mean
    if scale == "group":
        std = _nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
        adv = adv / (std + EPS)
    elif scale == "batch":
        std = _nanstd(rewards) if rewards.numel() > 1 else torch.zeros(())
        adv = adv / (std + EPS)
    return torch.nan_to_num(adv.reshape(-1), nan=0.0)


def rloo_advantages(rewards: torch.Tensor, group_size: int, normalize: bool = False) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, arXiv:2402.14740): A_i = r_i - mean of the other G - 1 rewards.

    NaN rewards are left out of the others' baselines and get advantage 0; ``normalize`` whitens the
    advantages over the batch afterwards (TRL's ``normalize_advantages``)."""
    grouped = _grouped(rewards, group_size)
    ok = ~torch.isnan(grouped)
    total = torch.nansum(grouped, dim=1, keepdim=True)
    count = ok.sum(dim=1, keepdim=True)
    if group_size > 1:
        baseline = (total - torch.nan_to_num(grouped, nan=0.0)) / (count - ok.long()).clamp(min=1)
        adv = grouped - baseline
    else:
        adv = torch.zeros_like(grouped)
    adv = adv.reshape(-1)
    if normalize:
        adv = (adv - torch.nanmean(adv)) / (_nanstd(adv) + EPS)
    return torch.nan_to_num(adv, nan=0.0)


def reinforce_pp_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE++-baseline (Hu et al. 2025, arXiv:2501.03262): subtract the group mean, then whiten over the
    whole batch (mean 0, std 1), so the scale does not depend on any one prompt's spread."""
    centred = group_advantages(rewards, group_size, scale="none")
    valid = ~torch.isnan(rewards)
    if valid.sum() < 2:
        return torch.zeros_like(centred)
    v = centred[valid]
    out = (centred - v.mean()) / (v.std() + EPS)
    return torch.where(valid, out, torch.zeros_like(out))


def remax_advantages(rewards: torch.Tensor, group_size: int, baseline: torch.Tensor) -> torch.Tensor:
    """ReMax (Li et al. 2024, arXiv:2310.10505, Alg. 1): A_i = r(x, y_i) − r(x, ŷ), where ŷ is the prompt's
    greedy (argmax) completion, sampled once per prompt for its reward only (it is not trained on).

    ``baseline``: (prompts,) the greedy completions' rewards. A NaN (null) reward or baseline gives NaN: that
    row, or that prompt's whole group, cannot be baselined, and the trainer leaves it out of the loss. The paper
    trains with REINFORCE, no clip; the default ``clip`` surrogate at μ = 1 has ρ = 1 and the same gradient,
    −A ∇log π (docs/online_rl.md, "ReMax").

        >>> remax_advantages(torch.tensor([1., 0., 1., 0.]), 2, baseline=torch.tensor([0., 1.]))
        tensor([ 1.,  0.,  0., -1.])
    """
    grouped = _grouped(rewards, group_size)
    if baseline.shape != (grouped.size(0),):
        raise ValueError(f"remax needs one baseline per prompt ({grouped.size(0)}), got shape {tuple(baseline.shape)}")
    return (grouped - baseline.to(grouped.dtype).unsqueeze(1)).reshape(-1)


ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": group_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "remax": remax_advantages,
}


# ------------------------------------------------------------------------------------------ KL estimators
def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """log π/π_ref: unbiased, high variance, can be negative."""
    return logps - ref_logps


def kl_k2(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """½ (log π/π_ref)²: low variance, biased; its gradient is the true KL's (Schulman 2020, "Approximating KL")."""
    return 0.5 * (logps - ref_logps) ** 2


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """π_ref/π - log(π_ref/π) - 1: unbiased and always >= 0 (GRPO's Eq. 4; TRL's)."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# ------------------------------------------------------------------------------------------ surrogates
def clip_surrogate(ratio: torch.Tensor, logps: torch.Tensor, adv: torch.Tensor, eps_low: float,
                   eps_high: float) -> torch.Tensor:
    """PPO's clipped objective (Schulman et al. 2017), with DAPO's clip-higher (Yu et al. 2025,
    arXiv:2503.14476): -min(ρ A, clip(ρ, 1 - ε_low, 1 + ε_high) A)."""
    return -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)


def cispo_surrogate(ratio: torch.Tensor, logps: torch.Tensor, adv: torch.Tensor, eps_low: float,
                    eps_high: float) -> torch.Tensor:
    """CISPO (MiniMax-M1, arXiv:2506.13585): REINFORCE with the importance weight clipped and detached,
    -sg(min(ρ, ε_high)) A log π, so every token keeps a gradient (PPO's clip zeroes clipped tokens').
    Here ``eps_high`` is the cap on ρ itself (TRL's convention for loss_type="cispo")."""
    return -torch.clamp(ratio, max=eps_high).detach() * adv * logps


def clip_fractions(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float):
    """PPO clip's clipped tokens: ρ below 1 - ε_low where A < 0, above 1 + ε_high where A > 0 (no gradient there)."""
    return (ratio < 1 - eps_low) & (adv < 0), (ratio > 1 + eps_high) & (adv > 0)


def cispo_fractions(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float):
    """CISPO caps the weight only from above, at ε_high itself."""
    return torch.zeros_like(ratio, dtype=torch.bool), ratio > eps_high


@dataclass(frozen=True)
class Surrogate:
    """A per-token surrogate loss and which tokens it clips (the `clip_low` / `clip_high` metrics)."""

    loss: Callable[..., torch.Tensor]
    clipped: Callable[..., tuple[torch.Tensor, torch.Tensor]]


SURROGATES: dict[str, Surrogate] = {"clip": Surrogate(clip_surrogate, clip_fractions),
                                    "cispo": Surrogate(cispo_surrogate, cispo_fractions)}


# ------------------------------------------------------------------------------------------ aggregation
def agg_grpo(per_token: torch.Tensor, mask: torch.Tensor, **_) -> torch.Tensor:
    """GRPO: mean over each sequence's tokens, then over sequences (a long completion's tokens weigh less)."""
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def agg_bnpo(per_token: torch.Tensor, mask: torch.Tensor, **_) -> torch.Tensor:
    """Token mean over the local batch (every token weighs the same within a micro-batch)."""
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def agg_dr_grpo(per_token: torch.Tensor, mask: torch.Tensor, max_completion_length: int | None = None, **_) -> torch.Tensor:
    """Dr. GRPO: token sum divided by a constant, B × max completion length (no length bias)."""
    if not max_completion_length:
        raise ValueError("dr_grpo aggregation needs max_completion_length")
    return (per_token * mask).sum() / (per_token.size(0) * max_completion_length)


def agg_dapo(per_token: torch.Tensor, mask: torch.Tensor, num_items: float | None = None, **_) -> torch.Tensor:
    """DAPO: token sum divided by the number of completion tokens of the whole step (every micro-batch and
    rank), so gradient accumulation and data parallelism give the gradient of one big batch."""
    denom = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token.dtype, device=per_token.device)
    return (per_token * mask).sum() / denom.clamp(min=1.0)


@dataclass(frozen=True)
class Aggregation:
    """How per-token losses become one loss, and so how a micro-batch's loss weighs in the step's.

    `step_normalized`: the aggregation divides by the whole step's totals (`num_items`), so a micro-batch's loss
    is already its part of the step's and the parts add up (weight 1). Otherwise it normalizes within the
    micro-batch and weighs by its share of the step's sequences: then B micro-batches of a step give the loss of
    one batch made of them exactly for `grpo` and `dr_grpo`, and for `bnpo` as TRL does under accumulation."""

    fn: Callable[..., torch.Tensor]
    step_normalized: bool

    def weight(self, sequences: int, step_sequences: int) -> float:
        return 1.0 if self.step_normalized else sequences / step_sequences


AGGREGATIONS: dict[str, Aggregation] = {
    "grpo": Aggregation(agg_grpo, False), "bnpo": Aggregation(agg_bnpo, False),
    "dr_grpo": Aggregation(agg_dr_grpo, False), "dapo": Aggregation(agg_dapo, True),
}


# ------------------------------------------------------------------------------------------ the loss
@dataclass(frozen=True)
class PolicyLossConfig:
    loss: str = "dapo"  # aggregation: grpo | bnpo | dr_grpo | dapo
    surrogate: str = "clip"  # clip | cispo
    epsilon: float = 0.2  # ε_low
    epsilon_high: float | None = None  # None: = epsilon (DAPO uses 0.28; CISPO's cap, e.g. 5.0)
    importance_level: str = "token"  # token | sequence (GSPO, Zheng et al. 2025, arXiv:2507.18071)
    beta: float = 0.0  # KL coefficient (0: no reference model, as TRL and DAPO)
    kl: str = "k3"
    # multiply the KL term by ρ, so its gradient is the unbiased reverse-KL gradient off-policy too
    # (DeepSeek-V3.2, arXiv:2512.02556; TRL 1.16's use_bias_correction_kl, on by default there too)
    kl_ratio_correction: bool = True
    max_completion_length: int | None = None  # dr_grpo's constant

    def __post_init__(self) -> None:
        for value, table, what in ((self.loss, AGGREGATIONS, "loss"), (self.surrogate, SURROGATES, "surrogate"),
                                   (self.kl, KL_ESTIMATORS, "kl")):
            if value not in table:
                raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(table)}")
        if self.importance_level not in ("token", "sequence"):
            raise ValueError(f"importance_level must be token or sequence, got {self.importance_level!r}")


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cfg: PolicyLossConfig, ref_logps: torch.Tensor | None = None, is_weights: torch.Tensor | None = None,
                num_items: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The policy-gradient loss of one micro-batch and its metrics.

    ρ = exp(logπ - logπ_old) per token, or for ``importance_level="sequence"`` (GSPO) exp of the sequence's
    mean log-ratio; per-token loss = surrogate(ρ, A) [× ``is_weights``, the truncated importance weights
    against the sampler's own log-probs] + β KL(π‖π_ref) [× ρ, ``kl_ratio_correction``]; then the aggregation. ``num_items``: the step's
    completion-token count (dapo).
    """
    mask = mask.to(logps.dtype)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    log_ratio = logps - old_logps
    if cfg.importance_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    surrogate = SURROGATES[cfg.surrogate]
    per_token = surrogate.loss(ratio, logps, adv, cfg.epsilon, eps_high)
    if is_weights is not None:
        per_token = per_token * is_weights
    kl = None
    if cfg.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference model's log-probs")
        kl = KL_ESTIMATORS[cfg.kl](logps, ref_logps)
        per_token = per_token + cfg.beta * (kl * ratio if cfg.kl_ratio_correction else kl)
    loss = AGGREGATIONS[cfg.loss].fn(per_token, mask, max_completion_length=cfg.max_completion_length, num_items=num_items)

    with torch.no_grad():
        full = ratio.expand_as(mask)
        n = mask.sum().clamp(min=1.0)
        low, high = surrogate.clipped(full, adv, cfg.epsilon, eps_high)
        # 0-d tensors on the loss's device: the trainer sums them over the step and reads them once
        metrics = {"clip_low": (low.to(mask.dtype) * mask).sum() / n, "clip_high": (high.to(mask.dtype) * mask).sum() / n,
                   "ratio_mean": (full * mask).sum() / n}
        if kl is not None:
            metrics["kl"] = (kl * mask).sum() / n
    return loss, metrics


def truncated_is_weights(logps_old: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor,
                         cap: float = 2.0) -> torch.Tensor:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL"): the sampler (vLLM) and the trainer compute different log-probs for the same tokens, so
    weight each token by min(π_trainer/π_sampler, cap), detached. Masked positions get 1."""
    w = torch.exp(logps_old - sampler_logps).clamp(max=cap)
    return torch.where(mask.bool(), w, torch.ones_like(w)).detach()


STALENESS_CORRECTIONS = ("tis", "mis")


def staleness_weights(prox_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor,
                      staleness: torch.Tensor, correction: str = "tis", cap: float = 2.0) -> torch.Tensor:
    """Per-token weights for tokens sampled by stale weights (asynchronous rollouts, `--max-staleness`).

    Decoupled PPO (Hilton et al. 2021; AReaL): the surrogate is clipped around the proximal policy π_prox (the
    trainer's weights before this update), and each token is weighted by π_prox / π_behaviour, the weights that
    sampled it, at temperature 1. ``tis``: min(ratio, cap) (truncated IS, Ionides 2008: bounded variance, a
    small bias); ``mis``: ratio where it is <= cap, 0 above (masked IS: tokens the old policy found far likelier
    than the current one are left out rather than down-weighted). Rows sampled at staleness 0 get exactly 1 (the
    same weights: their log-probs differ only by float rounding); masked positions get 1. Detached.

    >>> w = staleness_weights(torch.tensor([[0.0, -1.0, -1.0]]), torch.tensor([[0.0, -2.0, 0.0]]),
    ...                       torch.tensor([[0, 1, 1]]), torch.tensor([1.0]), "tis", 2.0)
    >>> [round(x, 4) for x in w[0].tolist()]   # e^1 capped at 2; e^-1
    [1.0, 2.0, 0.3679]
    """
    if correction not in STALENESS_CORRECTIONS:
        raise ValueError(f"unknown staleness correction {correction!r}; choose one of {', '.join(STALENESS_CORRECTIONS)}")
    ratio = torch.exp(prox_logps - behaviour_logps)
    w = ratio.clamp(max=cap) if correction == "tis" else torch.where(ratio <= cap, ratio, torch.zeros_like(ratio))
    stale = (staleness > 0).unsqueeze(-1).expand_as(w)
    return torch.where(mask.bool() & stale, w, torch.ones_like(w)).detach()


# ------------------------------------------------------------------------------------------ PPO (InstructGPT)
# Token-level credit assignment with a learned value function (Schulman et al. 2017; Ouyang et al. 2022,
# arXiv:2203.02155). Per-token tensors are (B, T) aligned like the log-probs: position t holds the token
# predicted from tokens < t, and ``values[:, t]`` is V(s_t), the value of the state before that token.
def kl_penalized_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                         kl_coef: float, kl: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """InstructGPT's reward: r_t = -β · KL_t(π_old‖π_ref) at every completion token, plus the sequence's scalar
    score at its last completion token. Returns (rewards (B, T), per-token KL (B, T)); zero off the mask."""
    mask = mask.to(logps.dtype)
    per_kl = KL_ESTIMATORS[kl](logps, ref_logps) * mask
    rewards = -kl_coef * per_kl
    last = (mask * torch.arange(mask.size(1), dtype=mask.dtype, device=mask.device)).argmax(-1)  # index of each row's last token
    has = mask.sum(-1) > 0
    rewards[has, last[has]] += scores.to(rewards.dtype)[has]
    return rewards, per_kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, arXiv:1506.02438) over each row's masked tokens:
    δ_t = r_t + γ V(s_{t+1}) - V(s_t),  A_t = δ_t + γλ A_{t+1},  with V = 0 after the last token (the episode
    ends there). Returns (advantages, returns = A + V), zero off the mask."""
    mask = mask.to(values.dtype)
    values = values * mask
    adv = torch.zeros_like(values)
    next_adv = torch.zeros(values.size(0), dtype=values.dtype, device=values.device)
    next_value = torch.zeros_like(next_adv)
    for t in reversed(range(values.size(1))):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        # a masked position (prompt or padding) passes the later values through unchanged
        next_adv = torch.where(m > 0, a, next_adv)
        next_value = torch.where(m > 0, values[:, t], next_value)
    return adv, (adv + values) * mask


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries of the whole batch (unbiased variance, as TRL's masked_whiten);
    with ``shift_mean=False`` the mean is added back (used for rewards). Zero off the mask."""
    mask = mask.to(x.dtype)
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1.0)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range: float = 0.2, num_items: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's value loss with the value clipped around the rollout-time estimate (as in OpenAI's baselines and
    TRL's PPOTrainer): ½ · mean_t max((V - R)², (V_old + clip(V - V_old, ±c) - R)²) over the masked tokens
    (or divided by ``num_items``, the step's token count). Returns (loss, fraction of tokens clipped)."""
    mask = mask.to(values.dtype)
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    a, b = (values - returns) ** 2, (clipped - returns) ** 2
    denom = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=values.dtype, device=values.device)
    loss = 0.5 * (torch.max(a, b) * mask).sum() / denom.clamp(min=1.0)
    frac = ((b > a).to(mask.dtype) * mask).sum().detach() / mask.sum().clamp(min=1.0)
    return loss, frac
