"""Losses written out, with the formulas in view: the pairwise preference objectives (DPO
sigmoid with cDPO label smoothing, hinge, IPO, ORPO, SimPO; BCO), KTO and Bradley-Terry.
Sequence log-probabilities (LD-DPO's included) are in logps.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmforge.config.schema import REFERENCE_FREE


@dataclass(frozen=True)
class PairwiseObjective:
    """What a pairwise preference run optimises: the loss `kind` (schema.PREF_LOSSES) and its
    settings.

    label_smoothing: cDPO, the share of pairs whose labels are taken to be flipped (sigmoid).
    ld_alpha: LD-DPO, the weight of an answer's tokens past the shorter answer of its pair
    (sequence_logps in logps.py applies it). bco_weight: BCO's share of the loss (the trainer
    keeps the running mean reward BCO compares with). ftx: an SFT term on the chosen answers."""

    kind: str = "sigmoid"
    beta: float = 0.1
    ftx: float = 0.0
    simpo_gamma: float = 0.5
    label_smoothing: float = 0.0
    ld_alpha: float | None = None
    bco_weight: float = 0.0

    @property
    def needs_reference(self) -> bool:
        return self.kind not in REFERENCE_FREE

    def describe(self) -> str:
        """`dpo sigmoid, beta 0.1; cDPO label smoothing 0.1; ...` for the plan."""
        parts = [f"dpo {self.kind}, beta {self.beta:g}"]
        if self.kind == "simpo":
            parts.append(f"gamma {self.simpo_gamma:g}")
        if self.label_smoothing:
            parts.append(f"cDPO label smoothing {self.label_smoothing:g}")
        if self.ld_alpha is not None:
            parts.append(f"LD-DPO alpha {self.ld_alpha:g}")
        if self.bco_weight:
            parts.append(f"BCO weight {self.bco_weight:g}")
        if self.ftx:
            parts.append(f"SFT term {self.ftx:g}")
        return "; ".join(parts)


def preference_loss(
    objective: PairwiseObjective,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses, and the implicit rewards of the chosen and rejected answers (BCO's
    term is added by the trainer, which holds its running mean)."""
    kind, beta = objective.kind, objective.beta
    if kind in REFERENCE_FREE:
        # Length-normalised log-probabilities: both ORPO and SimPO compare averages.
        chosen_avg = chosen_logps / chosen_tokens.clamp(min=1)
        rejected_avg = rejected_logps / rejected_tokens.clamp(min=1)
        chosen_rewards, rejected_rewards = beta * chosen_avg.detach(), beta * rejected_avg.detach()
        if kind == "simpo":
            # SimPO: -log sigmoid(beta * (avg_c - avg_r) - gamma)
            losses = -F.logsigmoid(beta * (chosen_avg - rejected_avg) - objective.simpo_gamma)
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
    if kind == "sigmoid":
        # DPO: -log sigmoid(beta * margin); cDPO (label smoothing e) takes each label to be
        # flipped with probability e: -(1 - e) log sigmoid(beta m) - e log sigmoid(-beta m)
        e = objective.label_smoothing
        losses = -(1 - e) * F.logsigmoid(beta * margin) - e * F.logsigmoid(-beta * margin)
    elif kind == "hinge":  # RSO / SLiC: max(0, 1 - beta * margin)
        losses = torch.relu(1 - beta * margin)
    elif kind == "ipo":  # IPO: (margin - 1 / (2 beta))^2 on per-token averages
        chosen_avg = chosen_ratio / chosen_tokens.clamp(min=1)
        rejected_avg = rejected_ratio / rejected_tokens.clamp(min=1)
        losses = ((chosen_avg - rejected_avg) - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown pref_loss {kind}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def bco_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, mean_reward: torch.Tensor | float
) -> torch.Tensor:
    """BCO (Jung et al., 2024): each answer is classified on its own, chosen above and rejected
    below the running mean reward delta: -log sigmoid(r_c - delta) - log sigmoid(-(r_r - delta)).
    The rewards are beta * log(pi / pi_ref), with their gradients."""
    return -F.logsigmoid(chosen_rewards - mean_reward) - F.logsigmoid(
        -(rejected_rewards - mean_reward)
    )


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
