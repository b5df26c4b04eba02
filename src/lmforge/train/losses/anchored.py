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
Gemma 3's 262k vocabulary, LLaMA-Factory's version keeps both in fp32, 1 GiB each per 1,024
positions, and their log-softmaxes besides). Both are summed over trained positions; the trainer divides by their count over
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
from lmforge.train.losses.token_weights import DFTWeighting, token_mean

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
    one) is made right away, so no vocabulary-sized tensor outlives its chunk. As in
    linear_ce.py, the chunk's buffers are allocated once (on a CPU a fresh vocabulary-sized
    buffer per chunk costs more in page faults than the pass that writes it) and the passes
    over them work in place."""

    @staticmethod
    def forward(ctx, hidden, weight, ref_hidden, ref_weight, targets, alpha, softcap, chunk, dtype):
        need_hidden, need_weight = hidden.requires_grad, weight.requires_grad
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = None
        if need_weight:  # fp32, written whole by the first chunk (zeros if there is none)
            empty = torch.zeros_like if hidden.shape[0] == 0 else torch.empty_like
            grad_weight = empty(weight, dtype=torch.float32)
        low = weight.to(dtype)  # no copy unless fp32 weights meet 16-bit mixed precision
        same_head = ref_weight.data_ptr() == weight.data_ptr()  # LoRA: the base's own head
        ref_low = low if same_head else ref_weight.to(dtype)
        buffers = _Buffers(min(chunk, hidden.shape[0]), weight.shape[0], dtype, hidden.device)
        product = None  # a weight-sized 16-bit buffer for each chunk's weight gradient
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].to(dtype)
            t = targets[start : start + chunk]
            ref_h = ref_hidden[start : start + chunk]
            z, z_ref, scratch, cap = buffers.logits(h, low, ref_h, ref_low, softcap)
            lse, lse_ref = _logsumexp(z, scratch), _logsumexp(z_ref, scratch)
            nll = lse - z.gather(1, t[:, None]).squeeze(1)
            w = _DFT.weights(nll, None)
            # log p and log q in place of the logits; their difference is exactly 0 where the
            # two predictions are equal (as at the first step), not a rounding of lse - lse
            log_p, log_q = z.sub_(lse[:, None]), z_ref.sub_(lse_ref[:, None])
            q = torch.exp(log_q, out=scratch)
            kl = log_q.sub_(log_p).mul_(q).sum(-1)
            total += (w * nll + alpha * kl).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            grad = log_p.exp_().mul_((w + alpha)[:, None])  # (w + alpha) * p
            grad.sub_(q.mul_(alpha)).scatter_add_(1, t[:, None], -w[:, None])
            if cap is not None:
                grad.mul_(cap.square_().neg_().add_(1))  # d(c tanh(x / c)) = 1 - tanh^2
            grad = buffers.in_dtype(grad)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk] = (grad @ low).to(hidden.dtype)
            if grad_weight is not None:  # summed in fp32 without a new weight-sized tensor
                first = start == 0
                if dtype == torch.float32:
                    if first:
                        torch.mm(grad.t(), h, out=grad_weight)
                    else:
                        grad_weight.addmm_(grad.t(), h)
                else:
                    product = torch.mm(grad.t(), h, out=product)
                    if first:
                        grad_weight.copy_(product)
                    else:
                        grad_weight.add_(product)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        # made for this backward pass only: scaled in place (a weight-sized fp32 copy would be
        # fresh memory at every step)
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output.float()
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(scale.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(scale).to(ctx.weight_dtype)
        return (grad_hidden, grad_weight) + (None,) * 7


class _Buffers:
    """A chunk's vocabulary-sized buffers: the model's and the reference's fp32 logits, one
    fp32 scratch (exp for the log-sum-exp, then q), and, for 16-bit projections, one in their
    dtype (each matmul's output, then the gradient)."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device):
        shape = (rows, vocab)
        self.z = torch.empty(shape, dtype=torch.float32, device=device)
        self.z_ref = torch.empty(shape, dtype=torch.float32, device=device)
        self.scratch = torch.empty(shape, dtype=torch.float32, device=device)
        fp32 = dtype == torch.float32
        self.low = None if fp32 else torch.empty(shape, dtype=dtype, device=device)

    def logits(self, h, weight, ref_h, ref_weight, softcap):
        """(z, z_ref, scratch, tanh(z / softcap) or None) for a chunk of n rows."""
        n = h.shape[0]
        z = self._project(h, weight, self.z[:n])
        z_ref = self._project(ref_h, ref_weight, self.z_ref[:n])
        cap = None
        if softcap:  # Gemma 2's final_logit_softcapping: c * tanh(z / c), on both
            cap = torch.tanh(z / softcap)
            z = torch.mul(cap, softcap, out=z)
            z_ref = z_ref.div_(softcap).tanh_().mul_(softcap)
        return z, z_ref, self.scratch[:n], cap

    def _project(self, h, weight, out):
        h = h.to(weight.dtype)
        if self.low is None:
            return torch.mm(h, weight.t(), out=out)
        return out.copy_(torch.mm(h, weight.t(), out=self.low[: h.shape[0]]))

    def in_dtype(self, grad):
        """The gradient in the projections' dtype, in the 16-bit buffer."""
        return grad if self.low is None else self.low[: grad.shape[0]].copy_(grad)


def _logsumexp(z: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Each row's log-sum-exp, with exp written into `scratch` (no new buffer)."""
    top = z.amax(dim=-1, keepdim=True)
    return torch.sub(z, top, out=scratch).exp_().sum(-1).log_() + top.squeeze(1)


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
        loss = token_mean(terms.sum(), len(terms), num_items_in_batch)
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
        self._ref_cast: tuple[torch.Tensor, torch.Tensor] | None = None  # (weight, its cast)

    def describe(self) -> str:
        return (
            f"{describe_anchored(self.alpha)}, chunked (no full logits){moe.describe(self.model)}"
        )

    def __call__(self, outputs, labels, num_items_in_batch=None):
        hidden = self._take_hidden()
        (ref_hidden, ref_weight), self.reference = self.reference, None
        weight, _ = output_projection(self.model.get_output_embeddings())
        total, count = anchored_linear_sum(
            hidden,
            weight,
            ref_hidden,
            self._cast_reference(ref_weight, weight),
            labels,
            alpha=self.alpha,
            softcap=self.softcap,
            chunk_tokens=self.chunk_tokens,
            dtype=self.dtype,
        )
        return moe.with_router_loss(
            token_mean(total, count, num_items_in_batch), outputs, self.model
        )

    def _cast_reference(self, ref_weight: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A frozen copy's head weight in the projection's dtype, cast once for the whole run
        (it never changes) rather than at every step; the base's own head as it is."""
        if self.dtype is None or ref_weight is weight or ref_weight.dtype == self.dtype:
            return ref_weight
        if self._ref_cast is None or self._ref_cast[0] is not ref_weight:
            self._ref_cast = (ref_weight, ref_weight.to(self.dtype))
        return self._ref_cast[1]


def describe_anchored(alpha: float) -> str:
    """The plan's loss line, up to how it is computed."""
    return (
        f"ASFT: DFT-weighted cross-entropy + {alpha:g} x KL(reference || model) on trained tokens"
    )
