"""ASFT, anchored supervised fine-tuning (LLaMA-Factory's `use_asft_loss`, `asft_alpha`): at
each trained position, DFT's weighted cross-entropy (token_weights.py: the loss times the
model's own probability of the target, no gradient through it) plus alpha times the KL
divergence from the reference model's prediction to the model's, KL(q || p) over the whole
vocabulary, which keeps the model near where it started while DFT sharpens it.

Per position, with p = softmax(z) the model's and q = softmax(z_ref) the reference's:

    loss = w * (lse(z) - z[target]) + alpha * (sum q * (z_ref - z) - lse(z_ref) + lse(z))
    d loss / d z = (w + alpha) * p - alpha * q - w * onehot(target),   w = p[target] (constant)

Two implementations of that one formula: `anchored_loss_terms` from logits (autograd; where
the model returns full logits), and `anchored_linear_sum` from final hidden states, which
projects a chunk of positions at a time and computes each chunk's gradient in the forward
pass, as linear_ce.py does, so neither the model's nor the reference's full logits exist (for
Gemma 3's 262k vocabulary, LLaMA-Factory's version keeps both in fp32: 2 GiB each per 1,024
positions). Both are summed over trained positions; the trainer divides by their count over
the whole accumulated batch, as for the plain loss (LLaMA-Factory averages each micro-batch,
so its loss depends on gradient_accumulation_steps).
"""

from __future__ import annotations

import torch

from lmforge.data.encoding.encode import IGNORE_INDEX
from lmforge.model import moe
from lmforge.train.losses.linear_ce import (
    LinearCrossEntropyLoss,
    chunk_tokens_for,
    output_projection,
)
from lmforge.train.losses.token_weights import DFTWeighting

_DFT = DFTWeighting()


def anchored_loss_terms(
    logits: torch.Tensor, ref_logits: torch.Tensor, targets: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Each position's ASFT loss (rows of logits, fp32 inside), differentiable in `logits`."""
    log_p = logits.float().log_softmax(-1)
    nll = -log_p.gather(1, targets[:, None]).squeeze(1)
    log_q = ref_logits.detach().float().log_softmax(-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    return _DFT.weights(nll.detach(), None) * nll + alpha * kl


def trained_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask over positions 0..L-2 whose next token trains, those targets)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return keep, targets[keep]


class _FusedAnchoredLoss(torch.autograd.Function):
    """Sum of ASFT's loss over rows of hidden states, chunk by chunk; each chunk's gradient
    (the formula in the module's docstring, through the softcap's derivative when there is
    one) is made right away, so no vocabulary-sized tensor outlives its chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, ref_hidden, ref_weight, targets, alpha, softcap, chunk, dtype):
        need_hidden = hidden.requires_grad
        need_weight = weight.requires_grad
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        low, ref_low = weight.to(dtype), ref_weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].to(dtype)
            t = targets[start : start + chunk]
            z, cap = _capped(h @ low.t(), softcap)
            z_ref, _ = _capped(ref_hidden[start : start + chunk].to(dtype) @ ref_low.t(), softcap)
            lse, lse_ref = z.logsumexp(-1), z_ref.logsumexp(-1)
            nll = lse - z.gather(1, t[:, None]).squeeze(1)
            w = _DFT.weights(nll, None)
            # log p and log q in place of the logits; their difference is exactly 0 where the
            # two predictions are equal (as at the first step), not a rounding of lse - lse
            log_p, log_q = z.sub_(lse[:, None]), z_ref.sub_(lse_ref[:, None])
            q = log_q.exp()
            kl = (q * log_q.sub_(log_p)).sum(-1)
            total += (w * nll + alpha * kl).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            grad = log_p.exp_().mul_((w + alpha)[:, None])  # (w + alpha) * p
            grad.sub_(q.mul_(alpha)).scatter_add_(1, t[:, None], -w[:, None])
            if cap is not None:
                grad.mul_(cap.square_().neg_().add_(1))  # d(c tanh(x / c)) = 1 - tanh^2
            grad = grad.to(dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk] = (grad @ low).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.add_((grad.t() @ h).float())
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output.float()
        if grad_hidden is not None:
            grad_hidden = grad_hidden * scale.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * scale).to(ctx.weight_dtype)
        return (grad_hidden, grad_weight) + (None,) * 7


def _capped(logits: torch.Tensor, softcap: float | None):
    """(fp32 logits, tanh(logits / softcap) or None): Gemma 2's final_logit_softcapping."""
    logits = logits.float()
    if not softcap:
        return logits, None
    cap = torch.tanh(logits / softcap)
    return cap * softcap, cap


def anchored_linear_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_hidden: torch.Tensor,
    ref_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    softcap: float | None = None,
    chunk_tokens: int | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int]:
    """Sum of ASFT's loss over trained positions, and how many there are, from the final hidden
    states of the model and of the reference (batch, length, hidden) and their output
    weights. Position t predicts label t + 1; dtype: what the projections compute in (the
    weight's by default); the softmaxes are fp32."""
    keep, targets = trained_positions(labels)
    # Four vocabulary-sized fp32 buffers live per chunk (logits and gradient, the reference's
    # logits and softmax): half of linear_ce's chunk keeps the same memory.
    chunk = chunk_tokens or max(16, chunk_tokens_for(weight.shape[0], hidden.device.type) // 2)
    grad = torch.is_grad_enabled()
    total = _FusedAnchoredLoss.apply(
        hidden[:, :-1][keep] if grad else hidden[:, :-1][keep].detach(),
        weight if grad else weight.detach(),
        ref_hidden[:, :-1][keep].detach(),
        ref_weight.detach(),
        targets,
        float(alpha),
        softcap,
        chunk,
        dtype or weight.dtype,
    )
    return total, int(keep.sum())


class AnchoredLogitsLoss:
    """A `compute_loss_func`: ASFT's loss from the logits the model returned and the
    reference's (`reference`, set by the trainer before each call: AnchoredSFTTrainer), where
    the chunked form does not apply (an adapted lm_head, compute_accuracy, chunked_loss: false,
    ZeRO-3)."""

    chunked = False

    def __init__(self, alpha: float, model=None):
        self.alpha = alpha
        self.model = model  # for a mixture-of-experts model's router loss
        self.reference: torch.Tensor | None = None

    def describe(self) -> str:
        router = moe.describe(self.model) if self.model is not None else ""
        return f"{describe_anchored(self.alpha)}, from full logits{router}"

    def __call__(self, outputs, labels, num_items_in_batch=None):
        reference, self.reference = self.reference, None  # held no longer than this step
        logits = outputs["logits"]
        keep, targets = trained_positions(labels.to(logits.device))
        terms = anchored_loss_terms(
            logits[:, :-1][keep], reference[:, :-1][keep], targets, self.alpha
        )
        denominator = num_items_in_batch if num_items_in_batch is not None else max(len(terms), 1)
        loss = terms.sum() / denominator
        return loss if self.model is None else moe.with_router_loss(loss, outputs, self.model)


class AnchoredLinearLoss(LinearCrossEntropyLoss):
    """A `compute_loss_func`: ASFT's loss from the final hidden states of the model (kept by
    LinearCrossEntropyLoss's hook) and of the reference, with `reference` = (hidden states,
    output weight) set by the trainer before each call; no full logits of either."""

    chunked = True

    def __init__(self, model, alpha: float, dtype: torch.dtype | None = None):
        super().__init__(model, dtype=dtype)
        self.alpha = alpha
        self.reference: tuple[torch.Tensor, torch.Tensor] | None = None

    def describe(self) -> str:
        return (
            f"{describe_anchored(self.alpha)}, chunked (no full logits){moe.describe(self.model)}"
        )

    def __call__(self, outputs, labels, num_items_in_batch=None):
        hidden, self._hidden = self._hidden, None
        (ref_hidden, ref_weight), self.reference = self.reference, None
        if hidden is None:
            raise RuntimeError("the model's forward pass did not run through its decoder")
        weight, _ = output_projection(self.model.get_output_embeddings())
        total, count = anchored_linear_sum(
            hidden,
            weight,
            ref_hidden,
            ref_weight,
            labels,
            alpha=self.alpha,
            softcap=self.softcap,
            chunk_tokens=self.chunk_tokens,
            dtype=self.dtype,
        )
        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        return moe.with_router_loss(total / denominator, outputs, self.model)


def describe_anchored(alpha: float) -> str:
    """The plan's loss line, up to how it is computed."""
    return (
        f"ASFT: DFT-weighted cross-entropy + {alpha:g} x KL(reference || model) on trained tokens"
    )
