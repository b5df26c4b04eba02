"""Cross-entropy over the vocabulary without materialising full logits.

A plain causal-LM loss computes logits for every position: batch x length x vocabulary, in
fp32 for the loss (Gemma 3: 262,144 tokens, so 4 x 512 positions take 2 GiB), although SFT
trains only the answer tokens. Here the model returns its final hidden states (and logits for
one position only); the loss projects just the trained positions onto the vocabulary, a chunk at
a time, and recomputes each chunk's logits in the backward pass instead of keeping them. The
result equals the plain loss (tests compare losses and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmforge.data.encode import IGNORE_INDEX

CHUNK_TOKENS = 1024


def _chunk_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits = (hidden @ weight.t()).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    softcap: float | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over trained positions, and how many there are.

    hidden: (batch, length, hidden) final hidden states; labels: (batch, length), -100 where
    nothing is trained; position t predicts label t + 1.
    """
    hidden = hidden[:, :-1]
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected = hidden[keep]
    selected_targets = targets[keep]
    total = selected.new_zeros((), dtype=torch.float32)
    for start in range(0, selected.shape[0], chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        total = total + checkpoint(
            _chunk_loss,
            selected[piece],
            weight,
            selected_targets[piece],
            softcap,
            use_reentrant=False,
        )
    return total, int(keep.sum())


class LinearCrossEntropyLoss:
    """A `compute_loss_func` for transformers' Trainer (which then handles gradient
    accumulation and multi-process token counts as for the model's own loss)."""

    def __init__(self, model, chunk_tokens: int = CHUNK_TOKENS):
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    def __call__(self, outputs, labels, num_items_in_batch=None):
        weight = self.model.get_output_embeddings().weight
        loss_sum, count = linear_cross_entropy_sum(
            outputs.hidden_states[-1],
            weight,
            labels,
            softcap=self.softcap,
            chunk_tokens=self.chunk_tokens,
        )
        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        return loss_sum / denominator


class HiddenStatesCollator:
    """Wraps a collator so the model returns hidden states and logits for one position only."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator(features)
        batch["output_hidden_states"] = True
        batch["logits_to_keep"] = 1
        return batch


def supports_linear_cross_entropy(model) -> bool:
    """The output head must be a plain linear layer: a LoRA- or copy-wrapped head (lora_target
    or additional_target naming lm_head) has extra weights the shortcut would skip."""
    head = model.get_output_embeddings()
    return type(head) is torch.nn.Linear and head.bias is None
