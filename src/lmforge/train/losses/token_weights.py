"""SFT losses that weigh each trained token's cross-entropy by a number taken from the model's
own prediction there (no gradient through the weight): LLaMA-Factory's `use_dft_loss` and
`use_eaft_loss`.

- DFT (Dynamic Fine-Tuning, Wu et al. 2025): weight p(target), so tokens the model already
  finds likely count fully and unlikely ones little, which the authors find generalises
  better than plain SFT.
- EAFT (entropy-adaptive): weight (H / 3) ** alpha, H the entropy of the prediction over its 20
  likeliest tokens, so confident positions count less than uncertain ones.

The same weighting serves the chunked loss (linear_ce.py, chunk by chunk) and the plain one
(`WeightedCrossEntropyLoss`, from full logits), so both give the same loss.
"""

from __future__ import annotations

import torch

from lmforge.data.encoding.encode import IGNORE_INDEX
from lmforge.model import moe


def token_mean(total: torch.Tensor, count: int, num_items_in_batch=None) -> torch.Tensor:
    """A loss summed over `count` trained tokens, as a mean: over the trained tokens of the
    whole accumulated batch when the Trainer counted them (num_items_in_batch), so gradient
    accumulation gives what one larger batch would; else over this batch's."""
    denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
    return total / denominator


class TokenWeighting:
    """Per-token loss weights from a prediction: `top_k` > 0 asks for the k largest logits of
    each position (what EAFT reads); `weights` gets them with each position's cross-entropy."""

    top_k = 0

    def weights(self, nll: torch.Tensor, top_logits: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class DFTWeighting(TokenWeighting):
    def weights(self, nll, top_logits):
        return torch.exp(-nll)  # p(target)


class EAFTWeighting(TokenWeighting):
    top_k = 20
    # LLaMA-Factory's scale: the entropy over 20 tokens is at most log 20 = 3.0
    ENTROPY_SCALE = 3.0

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def weights(self, nll, top_logits):
        log_probs = top_logits.float().log_softmax(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return (entropy / self.ENTROPY_SCALE).pow(self.alpha)


def sft_token_weighting(method) -> TokenWeighting | None:
    """The weighting the config asks for (MethodConfig's use_dft_loss / use_eaft_loss)."""
    if method.use_dft_loss:
        return DFTWeighting()
    if method.use_eaft_loss:
        return EAFTWeighting(method.eaft_alpha)
    return None


def weighted(weighting: TokenWeighting | None) -> str:
    """`DFT-weighted ` / `EAFT-weighted (alpha 0.5) ` / `` for the plan's loss line."""
    if isinstance(weighting, DFTWeighting):
        return "DFT-weighted "
    if isinstance(weighting, EAFTWeighting):
        return f"EAFT-weighted (alpha {weighting.alpha:g}) "
    return ""


class WeightedCrossEntropyLoss:
    """A `compute_loss_func` for transformers' Trainer: the weighted cross-entropy from the
    logits the model returned (where the chunked loss does not apply: an adapted lm_head,
    compute_accuracy, chunked_loss: false)."""

    def __init__(self, weighting: TokenWeighting, model=None):
        self.weighting = weighting
        self.model = model  # for a mixture-of-experts model's router loss

    def describe(self) -> str:
        router = moe.describe(self.model) if self.model is not None else ""
        return (
            f"{weighted(self.weighting)}cross-entropy on trained tokens, from full logits{router}"
        )

    def __call__(self, outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        targets = labels[:, 1:].to(logits.device)
        keep = targets != IGNORE_INDEX
        selected = logits[:, :-1][keep].float()
        nll = torch.nn.functional.cross_entropy(selected, targets[keep], reduction="none")
        top = None
        if self.weighting.top_k:
            top = selected.detach().topk(min(self.weighting.top_k, selected.shape[-1])).values
        weights = self.weighting.weights(nll.detach(), top)
        loss = token_mean((weights * nll).sum(), nll.numel(), num_items_in_batch)
        return loss if self.model is None else moe.with_router_loss(loss, outputs, self.model)
