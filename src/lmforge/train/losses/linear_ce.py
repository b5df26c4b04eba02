"""Cross-entropy over the vocabulary without materialising full logits.

A plain causal-LM loss computes logits for every position: batch x length x vocabulary, in
fp32 for the loss (Gemma 3: 262,144 tokens, so 4 x 512 positions take 2 GiB), although SFT
trains only the answer tokens. Here the model returns its final hidden states (and logits for
no position); the loss projects just the trained positions onto the vocabulary, a chunk at
a time, and computes each chunk's gradient right away so that no logits are kept. The result
equals the plain loss (tests compare losses and gradients).
"""

from __future__ import annotations

import torch

from lmforge.data.encoding.encode import IGNORE_INDEX
from lmforge.model import moe
from lmforge.model.forward_inputs import forward_takes, is_transformers_model
from lmforge.train.losses.token_weights import TokenWeighting, token_mean, weighted

# The loss runs while every activation of the step is still alive, so its one logits buffer adds
# to the step's peak: 128 MiB of fp32 logits per chunk (Gemma 3, 262,144 tokens: 128 positions;
# a 32,000-token vocabulary: 1,024). Smaller chunks cost time: for Gemma 3, 128 positions
# instead of 256 make the loss ~8 % slower (benchmarks/PROFILE.md).
CHUNK_BYTES = 128 * 2**20
# On a GPU larger chunks keep the tensor cores busy: 262k vocabulary, 8192 trained tokens, H100:
# 74 ms a step at 128 positions, 53 ms at 512 (+1.1 GiB), 51 ms at 2048 (+5.6 GiB); full logits
# 50 ms and 32 GiB; liger-kernel 67 ms (benchmarks/gpu/kernels.py).
CHUNK_BYTES_CUDA = 512 * 2**20


def chunk_tokens_for(vocab_size: int, device_type: str = "cpu") -> int:
    budget = CHUNK_BYTES_CUDA if device_type == "cuda" else CHUNK_BYTES
    return max(32, min(1024, budget // (4 * vocab_size)))


class _ChunkBuffers:
    """The vocabulary-sized buffers of a chunk, allocated once for all chunks: on a CPU a new
    buffer of this size is fresh memory from the kernel for every chunk, whose page faults cost
    more than the copy that writes it (a 128 x 262,144 bf16 -> fp32 copy: 46 ms into a new
    buffer, 6 ms into an existing one)."""

    def __init__(self, rows: int, weight: torch.Tensor, softcap: bool):
        shape = (rows, weight.shape[0])
        self.low = weight.new_empty(shape)  # the projection's dtype: logits, then the gradient
        fp32 = weight.dtype == torch.float32
        self.fp32 = self.low if fp32 else weight.new_empty(shape, dtype=torch.float32)
        self.capped = weight.new_empty(shape, dtype=torch.float32) if softcap else None
        if softcap and fp32:  # the logits' buffer would be the capped logits' too
            self.fp32 = weight.new_empty(shape, dtype=torch.float32)
        self._weight = weight
        self._product = None

    def weight_product(self) -> torch.Tensor:
        """A weight-sized buffer in the projection's dtype for each chunk's weight gradient
        (when the head trains), allocated at the first chunk that needs it."""
        if self._product is None:
            self._product = torch.empty_like(self._weight)
        return self._product

    def rows(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits buffer in the projection's dtype, fp32 buffer) for a chunk of n positions:
        one and the same tensor when the projection is fp32."""
        low = self.low[:n]
        return low, (low if self.fp32 is self.low else self.fp32[:n])


class _TrainedRows:
    """Rows of the output weight that train on their own (peft's trainable tokens: the rows of
    tokens added to the vocabulary) while the rest is frozen: their logits come from
    `values`, and only their k x hidden gradient is made, not a vocabulary-sized one (Gemma:
    262k x 640 in fp32 per step, 1 GB and most of the added tokens' cost)."""

    def __init__(self, weight, ids, values, dtype):
        self.ids = ids
        self.values = values.to(dtype)
        # where each vocabulary id is among the rows (-1: not a trained row)
        self.position = torch.full((weight.shape[0],), -1, dtype=torch.long, device=ids.device)
        self.position[ids] = torch.arange(ids.numel(), device=ids.device)
        # what the frozen weight's product misses for these rows: (values - weight rows)
        self.difference = self.values - weight[ids].to(dtype)
        self.grad = torch.zeros_like(values, dtype=torch.float32) if values.requires_grad else None

    def project(self, h, logits) -> None:
        """The rows' logits, in place of the frozen weight's."""
        logits.index_copy_(1, self.ids, h @ self.values.t())

    def target_rows(self, weight, t) -> torch.Tensor:
        """weight[t] with the trained rows' values where a target is one of them."""
        position = self.position[t]
        merged = weight[t].float()
        trained = self.values.float()[position.clamp(min=0)]
        return torch.where((position >= 0)[:, None], trained, merged)

    def correct(self, exps, product) -> None:
        """exps @ weight computed with the frozen rows: add exps' share through the trained
        rows' difference (one n x k x hidden product)."""
        product.add_(exps[:, self.ids] @ self.difference)

    def accumulate(self, exps, h, t, row_scale, target_scale) -> None:
        """The rows' gradient: (softmax at those columns)^T h, minus h where the target is one
        of them (both through the softcap's derivative and the token weights)."""
        scaled = h.float() * row_scale
        self.grad.add_(exps[:, self.ids].float().t() @ scaled)
        position = self.position[t]
        target = h.float() if target_scale is None else h.float() * target_scale
        hit = (position >= 0)[:, None]
        self.grad.index_add_(0, position.clamp(min=0), -torch.where(hit, target, 0.0))


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of (hidden @ weight^T) against targets, chunk by chunk.

    Each chunk's gradient is computed in the forward pass, right after its loss (softmax minus
    one-hot, through the softcap when there is one), and only the small gradients with respect
    to the hidden states (and the weight, when it trains) are kept: no logits survive a chunk,
    and the backward pass does no vocabulary-sized work again (a recomputing checkpoint would
    run each chunk's projection twice)."""

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        targets,
        softcap,
        chunk_tokens,
        need_hidden,
        need_weight,
        dtype,
        weighting,
        row_ids,
        row_values,
    ):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = None if row_ids is None else _TrainedRows(weight, row_ids, row_values, dtype)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = None
        if need_weight:
            # fp32 whatever the weight's dtype (the chunks' terms add up in it), written whole
            # by the first chunk: only a batch without a trained position needs zeros
            empty = torch.zeros_like if hidden.shape[0] == 0 else torch.empty_like
            grad_weight = empty(weight, dtype=torch.float32)
        ctx.weight_dtype = weight.dtype
        weight = weight.to(dtype)  # no copy unless fp32 weights meet 16-bit mixed precision
        buffers = _ChunkBuffers(min(chunk_tokens, hidden.shape[0]), weight, softcap is not None)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h = hidden[start : start + chunk_tokens].to(dtype)
            t = targets[start : start + chunk_tokens]
            # Vocabulary-sized work is bound by memory bandwidth (on a CPU each elementwise
            # pass over a chunk costs about a fifth of its matmuls), so it makes few: exp and
            # the row sums work in place on the chunk's one fp32 copy, and the gradient's two
            # row terms - softmax = exp / sum, and minus one at the target - are applied to the
            # small results of the matmuls instead (grad @ W = (exp @ W) / sum - W[t]).
            low, exps = buffers.rows(h.shape[0])
            logits = torch.mm(h, weight.t(), out=low)
            if rows is not None:
                rows.project(h, logits)
            if softcap:
                capped = buffers.capped[: h.shape[0]].copy_(logits).div_(softcap).tanh_()
                logits = torch.mul(capped, softcap, out=exps)
            top = logits.amax(dim=-1, keepdim=True).float()
            target_logits = logits.gather(1, t[:, None]).squeeze(1).float()
            top_k = None  # the largest logits, for a weighting that reads them (EAFT)
            if weighting is not None and weighting.top_k:
                top_k = logits.topk(min(weighting.top_k, logits.shape[-1])).values
            if logits is not exps:
                exps.copy_(logits)
            del logits
            if _needs_shift(top):
                exps.sub_(top)
                shift = top.squeeze(1)
            else:
                shift = 0.0
            sums = exps.exp_().sum(dim=-1)
            nll = sums.log() + shift - target_logits
            token_weights = None if weighting is None else weighting.weights(nll, top_k)
            total += nll.sum() if token_weights is None else (token_weights * nll).sum()
            if grad_hidden is None and grad_weight is None and (rows is None or rows.grad is None):
                continue
            target_scale = None  # d(capped logit)/d(logit) at the target: 1 without softcap
            if softcap:
                target_scale = 1 - capped.gather(1, t[:, None]).square()
                exps.mul_(capped.square_().neg_().add_(1))
                del capped
            if low is not exps:
                exps = low.copy_(exps)  # the logits are no longer needed: their buffer
            # d(w * nll) = w * (softmax - onehot): the weight scales both row terms
            row_scale = sums.reciprocal()[:, None]
            if token_weights is not None:
                column = token_weights[:, None]
                row_scale = row_scale * column
                target_scale = column if target_scale is None else target_scale * column
            if grad_hidden is not None:
                target_rows = weight[t].float() if rows is None else rows.target_rows(weight, t)
                if target_scale is not None:
                    target_rows *= target_scale
                product = exps @ weight
                if rows is not None:
                    rows.correct(exps, product)
                grad_hidden[start : start + chunk_tokens] = (
                    product.float().mul_(row_scale).sub_(target_rows)
                )
            if rows is not None and rows.grad is not None:
                rows.accumulate(exps, h, t, row_scale, target_scale)
            if grad_weight is not None:
                scaled = (h.float() * row_scale).to(weight.dtype)
                first = start == 0
                if weight.dtype == torch.float32:
                    if first:
                        torch.mm(exps.t(), scaled, out=grad_weight)
                    else:
                        grad_weight.addmm_(exps.t(), scaled)
                else:  # 16-bit product into one reused buffer, added to the fp32 sum
                    product = torch.mm(exps.t(), scaled, out=buffers.weight_product())
                    if first:
                        grad_weight.copy_(product)
                    else:
                        grad_weight.add_(product)
                target_rows = h.float() if target_scale is None else h.float() * target_scale
                # accumulate=True: repeated targets add up, deterministically on CUDA too
                grad_weight.index_put_((t,), target_rows.neg(), accumulate=True)
        ctx.save_for_backward(grad_hidden, grad_weight, None if rows is None else rows.grad)
        ctx.row_dtype = None if row_values is None else row_values.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        # The gradients were made for this backward pass only, so they are scaled in place
        # (a new fp32 copy of Gemma-3-270M's trained head gradient was 640 MiB of fresh
        # memory: 0.4 s on a CPU). A second backward through the same graph (retain_graph)
        # stops with autograd's error about a saved tensor modified in place, not with
        # gradients scaled twice.
        grad_hidden, grad_weight, grad_rows = ctx.saved_tensors
        scale = grad_output.float()
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(scale)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(scale).to(ctx.weight_dtype)
        if grad_rows is not None:
            grad_rows = grad_rows.mul_(scale).to(ctx.row_dtype)
        return (grad_hidden, grad_weight) + (None,) * 8 + (grad_rows,)


# Without subtracting each row's maximum, exp of every logit stays an fp32 number whose row
# sum neither overflows (< 1e38 up to 1e11 tokens) nor loses the top logits to underflow.
_UNSHIFTED_RANGE = (-40.0, 60.0)


def _needs_shift(top: torch.Tensor) -> bool:
    """Whether exp must take logits minus each row's maximum (as softmax always does). Only on
    a CPU is the extra pass over the chunk worth leaving out where it is safe: deciding reads a
    value on the host, which on a GPU would wait for the device at every chunk."""
    if top.device.type != "cpu":
        return True
    low, high = _UNSHIFTED_RANGE
    return not bool(((top > low) & (top < high)).all())


def linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    softcap: float | None = None,
    chunk_tokens: int | None = None,
    dtype: torch.dtype | None = None,
    weighting: TokenWeighting | None = None,
    trained_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over trained positions, and how many there are.

    hidden: (batch, length, hidden) final hidden states; labels: (batch, length), -100 where
    nothing is trained; position t predicts label t + 1. chunk_tokens: positions projected at
    a time (default: a 128 MiB logits buffer). dtype: what the projection computes in (the
    weight's by default; bf16/fp16 under mixed precision, as autocast would for the model's own
    output head); the softmax and the sum are fp32 either way. weighting: each token's
    cross-entropy times a weight from its prediction (DFT, EAFT: token_weights.py).
    trained_rows: (ids, values): these rows of `weight` are `values` (which train), the rest of
    `weight` is frozen (output_projection).
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected = hidden[:, :-1][keep]
    grad = torch.is_grad_enabled()
    total = _FusedLinearCrossEntropy.apply(
        selected,
        weight,
        targets[keep],
        softcap,
        chunk_tokens or chunk_tokens_for(weight.shape[0], hidden.device.type),
        grad and selected.requires_grad,
        grad and weight.requires_grad,
        dtype or weight.dtype,
        weighting,
        *_rows_for(trained_rows, grad),
    )
    return total, int(keep.sum())


def _rows_for(trained_rows, grad: bool) -> tuple:
    """(ids, values) for the autograd function: values without their gradient when no
    gradient is computed (evaluation), so none is made."""
    if trained_rows is None:
        return None, None
    ids, values = trained_rows
    return ids, values if grad else values.detach()


class LinearCrossEntropyLoss:
    """A `compute_loss_func` for transformers' Trainer (which then handles gradient
    accumulation and multi-process token counts as for the model's own loss).

    The final hidden states are taken from the decoder by a forward hook rather than asked for
    with `output_hidden_states`: that returns every layer's, and under mixed precision
    accelerate converts each one the model returns to an fp32 copy."""

    def __init__(
        self,
        model,
        chunk_tokens: int | None = None,
        dtype: torch.dtype | None = None,
        weighting: TokenWeighting | None = None,
    ):
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.dtype = dtype
        self.weighting = weighting
        self.softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        self._hidden: torch.Tensor | None = None
        model.get_decoder().register_forward_hook(self._keep_hidden)

    def describe(self) -> str:
        return (
            f"{weighted(self.weighting)}cross-entropy on trained tokens, chunked (no full logits)"
            + moe.describe(self.model)
        )

    def _keep_hidden(self, module, args, output) -> None:
        self._hidden = final_hidden_states(output)

    def _take_hidden(self) -> torch.Tensor:
        """The step's final hidden states, held no longer than this step."""
        hidden, self._hidden = self._hidden, None
        if hidden is None:
            raise RuntimeError("the model's forward pass did not run through its decoder")
        return hidden

    def __call__(self, outputs, labels, num_items_in_batch=None):
        hidden = self._take_hidden()
        weight, trained_rows = output_projection(self.model.get_output_embeddings())
        loss_sum, count = linear_cross_entropy_sum(
            hidden,
            weight,
            labels,
            softcap=self.softcap,
            chunk_tokens=self.chunk_tokens,
            dtype=self.dtype,
            weighting=self.weighting,
            trained_rows=trained_rows,
        )
        loss = token_mean(loss_sum, count, num_items_in_batch)
        return moe.with_router_loss(loss, outputs, self.model)


def final_hidden_states(decoder_output) -> torch.Tensor:
    """The hidden states a decoder's forward returned (a tuple or a model output)."""
    if isinstance(decoder_output, tuple):
        return decoder_output[0]
    return decoder_output.last_hidden_state


# No position at all: transformers' models take a slice where they take a tensor of positions.
# An int would do for most, but Gemma 4's KV-shared layers read `logits_to_keep: 1` as "only the
# last position matters" and drop the others from the decoder's later layers, whose output the
# loss needs at every trained position.
NO_POSITION = slice(0, 0)


def logits_to_keep_for(model) -> slice | int | None:
    """The `logits_to_keep` that keeps the model's own head from projecting what the loss
    projects itself: no position for transformers' models; the last one for remote code that
    takes the argument (it may not take a slice); None where the forward does not take it (it
    computes every position's logits anyway, so the chunked loss would only add work)."""
    if not forward_takes(model, "logits_to_keep", through_kwargs=False):
        return None
    return NO_POSITION if is_transformers_model(model) else 1


class LastLogitCollator:
    """Wraps a collator so the model's head projects as few positions as `keep` allows (the
    loss projects the trained positions itself)."""

    def __init__(self, collator, keep: slice | int = NO_POSITION):
        self.collator = collator
        self.keep = keep

    def __call__(self, features):
        batch = self.collator(features)
        batch["logits_to_keep"] = self.keep
        return batch


def output_projection(head):
    """(weight, trained rows) the output head projects with, or None where the head is more
    than a weight (a LoRA- or copy-wrapped head: lora_target or additional_target naming
    lm_head). With peft's trainable tokens (rows of tokens added to the vocabulary), the base
    weight and (ids, values) of the rows that train."""
    if type(head) is torch.nn.Linear:
        return (head.weight, None) if head.bias is None else None
    rows = getattr(head, "token_adapter", None)  # peft's TrainableTokensWrapper
    base = getattr(rows, "base_layer", None)
    if type(base) is not torch.nn.Linear or base.bias is not None:
        return None
    active = [] if rows.disable_adapters or rows.merged else list(rows.active_adapters)
    if not active:
        return base.weight, None
    if len(active) > 1:  # several adapters' rows: the merged weight carries them all
        return rows.get_merged_weights(active), None
    ids = torch.as_tensor(rows.token_indices[active[0]], device=base.weight.device)
    return base.weight, (ids, rows.trainable_tokens_delta[active[0]])


def supports_linear_cross_entropy(model) -> bool:
    """The output head must project with a weight alone (output_projection); and the model
    must name its decoder, whose output the loss takes."""
    if output_projection(model.get_output_embeddings()) is None:
        return False
    try:  # the final hidden states come from the decoder (remote code may not name one)
        return isinstance(model.get_decoder(), torch.nn.Module)
    except (AttributeError, NotImplementedError):
        return False
