"""Training objectives as pure functions of log-probabilities (or reward-model scores).

Every function takes per-sequence tensors of shape (B,) and returns per-example losses of shape (B,);
the caller averages them (``losses.mean()``). Nothing here touches a model, so each loss can be checked
against its paper by hand. Conventions follow TRL 1.16 where TRL matches the paper; docs/objectives.md
lists the places where they differ and why.

Notation: ``logp(y|x)`` is the summed log-probability of the completion tokens; ``avg logp`` is that sum
divided by the number of completion tokens; the reference model's log-probs are detached inputs.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def sft_loss(logps_sum: torch.Tensor, n_tokens: torch.Tensor, total_tokens: float | None = None) -> torch.Tensor:
    """Token-mean negative log-likelihood of the completion tokens of a batch (a scalar).

    L = -sum_i logp(y_i|x_i) / sum_i |y_i|. Pass ``total_tokens`` (the token count of the whole
    accumulated step, all ranks) so that gradient accumulation gives the same gradient as one big batch.
    """
    denom = n_tokens.sum().clamp(min=1) if total_tokens is None else max(float(total_tokens), 1.0)
    return -logps_sum.sum() / denom


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    dpop_lambda: float = 0.0,
    chosen_n_tokens: torch.Tensor | None = None,
    rejected_n_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO and its pairwise variants. Returns (losses, chosen_rewards, rejected_rewards).

    With h = [logp(y_w) - ref(y_w)] - [logp(y_l) - ref(y_l)] (the log-ratio margin):
      sigmoid (Rafailov et al. 2023, arXiv:2305.18290), with cDPO label smoothing eps:
          -(1-eps) log σ(β h) - eps log σ(-β h)
      robust  (Chowdhury et al. 2024, arXiv:2403.00409), unbiased under label-flip rate eps < 0.5:
          [-(1-eps) log σ(β h) + eps log σ(-β h)] / (1 - 2 eps)
      hinge   (SLiC, Zhao et al. 2023, arXiv:2305.10425):  max(0, 1 - β h)
      ipo     (Azar et al. 2023, arXiv:2310.12036, Eq. 17): (h - 1/(2β))^2, where β plays the role of τ.
              If ``chosen_n_tokens``/``rejected_n_tokens`` are given, each log-ratio is divided by its
              completion length first (TRL's convention, confirmed by the IPO authors); else sequence sums.
    DPOP (Pal et al. 2024, arXiv:2402.13228) subtracts λ·max(0, ref(y_w) - logp(y_w)) inside β(...) for
    the sigmoid loss, penalizing a chosen log-prob that falls below the reference (off when λ = 0).
    Rewards are β·(logp - ref), detached, as TRL logs them.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {DPO_LOSS_TYPES}")
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        if dpop_lambda:
            h = h - dpop_lambda * torch.clamp(ref_chosen - policy_chosen, min=0)
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h) + label_smoothing * F.logsigmoid(-beta * h)) / (
            1 - 2 * label_smoothing
        )
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # ipo
        if chosen_n_tokens is not None and rejected_n_tokens is not None:
            h = chosen_logratio / chosen_n_tokens.clamp(min=1) - rejected_logratio / rejected_n_tokens.clamp(min=1)
        losses = (h - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def simpo_loss(
    policy_chosen_avg: torch.Tensor,
    policy_rejected_avg: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al. 2024, arXiv:2405.14734, Eq. 6): reference-free, length-normalized.

    L = -log σ(β·avg logp(y_w) - β·avg logp(y_l) - γ). Defaults β = 2.0, γ = 1.0 (γ/β = 0.5), the
    paper's released Mistral-base setting. Returns (losses, chosen_rewards, rejected_rewards) with
    reward = β·avg logp, detached.
    """
    chosen_rewards = beta * policy_chosen_avg
    rejected_rewards = beta * policy_rejected_avg
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    lam: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO (Hong et al. 2024, arXiv:2403.07691, Eqs. 4-7): SFT plus an odds-ratio term, no reference.

    With P = exp(avg logp) and odds(y) = P / (1 - P):
        L = NLL(y_w) - λ · log σ( log odds(y_w) - log odds(y_l) ),  λ = 0.1 by default (the paper's).
    ``chosen_nll`` is the SFT term: per-example token-mean NLL, or a scalar (TRL uses the token mean over
    the batch's chosen tokens). Returns (losses, log_odds_ratio) with the log odds ratio detached.
    """
    log_odds = (chosen_avg_logps - rejected_avg_logps) - (_log1mexp(chosen_avg_logps) - _log1mexp(rejected_avg_logps))
    losses = chosen_nll - lam * F.logsigmoid(log_odds)
    return losses, log_odds.detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl_policy_logps: torch.Tensor,
    kl_ref_logps: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024, arXiv:2402.01306, Eq. 7). Returns (losses, rewards, kl).

    r = logp(y|x) - ref(y|x);  z0 = max(0, mean_j [logp(y'_j|x_j) - ref(y'_j|x_j)]), detached, where
    (x_j, y'_j) are mismatched pairs from the same batch (``data.kto_mismatched_pairs``).
        desirable:    λ_D · (1 - σ(β (r - z0)))
        undesirable:  λ_U · (1 - σ(β (z0 - r)))
    With no mismatched pair (``kl_*`` empty, e.g. batch size 1) z0 = 0; see docs/objectives.md.
    ``labels`` is a bool tensor (True = desirable). Rewards are β·r, detached.
    """
    if kl_policy_logps.numel() == 0:
        kl = torch.zeros((), dtype=policy_logps.dtype, device=policy_logps.device)
    else:
        kl = (kl_policy_logps - kl_ref_logps).mean().detach().clamp(min=0)
    logratio = policy_logps - ref_logps
    labels = labels.to(torch.bool)
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio)))
    losses = torch.where(labels, desirable, undesirable)
    return losses, beta * logratio.detach(), kl


def bradley_terry_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley–Terry reward-model loss (Ouyang et al. 2022; Llama 2's margin variant): per-pair losses.

    L = -log σ(r(y_w) - r(y_l) - m), with m = 0 unless a margin is given.
    """
    diff = chosen_scores - rejected_scores
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def ranking_to_pairs(k: int) -> list[tuple[int, int]]:
    """All (better, worse) index pairs of a ranking of k items listed best first: C(k, 2) pairs.

    InstructGPT trains the C(k, 2) pairs of one prompt as a single batch element (mean over its pairs):
    ``pairs = ranking_to_pairs(len(scores)); i, j = zip(*pairs);
    bradley_terry_loss(scores[list(i)], scores[list(j)]).mean()``.
    """
    if k < 2:
        raise ValueError(f"a ranking needs at least 2 items, got {k}")
    return list(itertools.combinations(range(k), 2))
