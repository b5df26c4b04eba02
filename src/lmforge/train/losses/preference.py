"""Losses written out, with the formulas in view: the pairwise preference objectives (DPO
sigmoid, hinge, IPO, ORPO, SimPO), KTO and Bradley-Terry. Sequence log-probabilities are in
logps.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PREF_LOSSES = ("sigmoid", "hinge", "ipo", "orpo", "simpo")
REFERENCE_FREE = ("orpo", "simpo")


def preference_loss(
    kind: str,
    beta: float,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    simpo_gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses, and the implicit rewards of the chosen and rejected answers."""
    if kind in REFERENCE_FREE:
        # Length-normalised log-probabilities: both ORPO and SimPO compare averages.
        chosen_avg = chosen_logps / chosen_tokens.clamp(min=1)
        rejected_avg = rejected_logps / rejected_tokens.clamp(min=1)
        chosen_rewards, rejected_rewards = beta * chosen_avg.detach(), beta * rejected_avg.detach()
        if kind == "simpo":
            # SimPO: -log sigmoid(beta * (avg_c - avg_r) - gamma)
            losses = -F.logsigmoid(beta * (chosen_avg - rejected_avg) - simpo_gamma)
        else:
            # ORPO: NLL(chosen) - beta * log sigmoid(log odds(chosen) - log odds(rejected)),
            # with odds(p) = p / (1 - p) over the average token probability.
            log_odds = (chosen_avg - rejected_avg) - (
                torch.log1p(-torch.exp(chosen_avg).clamp(max=1 - 1e-6))
                - torch.log1p(-torch.exp(rejected_avg).clamp(max=1 - 1e-6))
            )
            losses = -chosen_avg - beta * F.logsigmoid(log_odds)
        return losses, chosen_rewards, rejected_rewards
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"pref_loss {kind} needs reference log-probabilities")
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    margin = chosen_ratio - rejected_ratio
    if kind == "sigmoid":  # DPO: -log sigmoid(beta * margin)
        losses = -F.logsigmoid(beta * margin)
    elif kind == "hinge":  # RSO / SLiC: max(0, 1 - beta * margin)
        losses = torch.relu(1 - beta * margin)
    elif kind == "ipo":  # IPO: (margin - 1 / (2 beta))^2 on per-token averages
        chosen_avg = chosen_ratio / chosen_tokens.clamp(min=1)
        rejected_avg = rejected_ratio / rejected_tokens.clamp(min=1)
        losses = ((chosen_avg - rejected_avg) - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown pref_loss {kind}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def kto_loss(
    beta: float,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_reference: torch.Tensor,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al., 2024): each completion's implicit reward is compared with a
    batch estimate of KL(policy || reference) from mismatched prompt/completion pairs."""
    ratio = logps - ref_logps
    z = kl_reference.clamp(min=0).detach()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (ratio - z))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio))),
    )
    return losses, beta * ratio.detach()


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Reward modelling: -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen_scores - rejected_scores)
