"""Log-probabilities of given tokens under the model's logits: the one formula every preference
and RL loss starts from."""

from __future__ import annotations

import torch

from lmforge.data.encoding.encode import IGNORE_INDEX


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position: logits [..., V] predict targets [...] (same leading
    shape). Computed in fp32 as logit - logsumexp, which keeps one [..., V] tensor fewer than
    log_softmax (the vocabulary can be large)."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(token) over each row's trained tokens, and how many there are.

    logits[:, t] predicts labels[:, t + 1]; labels are -100 where nothing is trained.
    """
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logps = token_logps(logits[:, :-1], labels.masked_fill(~mask, 0))
    return (logps * mask).sum(-1), mask.sum(-1)
