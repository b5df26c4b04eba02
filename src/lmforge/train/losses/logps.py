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


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, ld_alpha: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(token) over each row's trained tokens, and how many there are.

    logits[:, t] predicts labels[:, t + 1]; labels are -100 where nothing is trained.
    ld_alpha (LD-DPO, Liu et al. 2024): the rows are pairs, all chosen answers then all
    rejected ones; in each answer the trained tokens past the length of the pair's shorter
    answer count ld_alpha times, so the longer answer's log-probability is not larger in
    magnitude for its length alone. The counts returned are the plain ones.
    """
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logps = token_logps(logits[:, :-1], labels.masked_fill(~mask, 0)) * mask
    counts = mask.sum(-1)
    if ld_alpha is None:
        return logps.sum(-1), counts
    half = counts.shape[0] // 2
    shared = torch.minimum(counts[:half], counts[half:]).repeat(2)
    # rank of each trained token within its answer (1, 2, ...): the first `shared` are common
    past_shared = (mask.cumsum(-1) > shared[:, None]) & mask
    weights = torch.where(past_shared, ld_alpha, 1.0)
    return (logps * weights).sum(-1), counts
