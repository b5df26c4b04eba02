"""Attention for packed and padding-free rows under sdpa, one causal call per sample.

transformers isolates the samples of a packed row under sdpa with a block-diagonal mask over
the whole row. The kernel then works on every (query, key) pair of the row and masks most of
them away, and with a mask it cannot skip the upper triangle either: at 4 samples of ~230 tokens
per row that is 7x the pairs the samples need, 17 % of a CPU training step (benchmarks/PROFILE.md).
flash-attention avoids this with its variable-length kernel; this does the same for sdpa: the
row's sample boundaries (cu_seq_lens_q, from our collator) split it, and each sample runs its own
`scaled_dot_product_attention(is_causal=True)`, with a banded mask only where a sample is longer
than the layer's sliding window. No T x T mask is built at all.

It is registered with transformers' AttentionInterface under NAME and used only while a packed
or padding-free run trains (the collator always sends the boundaries); the model goes back to
sdpa afterwards. The packing isolation check runs on it like on any other implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "lmforge_varlen_sdpa"
BASE = "sdpa"


def varlen_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or attention_mask is not None:
        raise RuntimeError(
            f"{NAME} runs on one flattened row with cu_seq_lens_q (lmforge's packed collator); "
            "this call has none"
        )
    if kwargs.get("softcap") is not None:
        raise RuntimeError(f"{NAME}, like sdpa, does not support attention logit softcapping")
    # Grouped-query attention natively: repeating the key/value heads would keep copies `groups`
    # times their size for the backward pass (Gemma 3 270M: 4x).
    gqa = query.shape[1] != key.shape[1]
    edges = bounds.tolist()
    outputs = []
    for start, end in zip(edges, edges[1:]):
        length = end - start
        mask = None
        if sliding_window is not None and length > sliding_window:
            position = torch.arange(length, device=query.device)
            distance = position[:, None] - position[None, :]
            mask = (distance >= 0) & (distance < sliding_window)  # as transformers' window
        outputs.append(
            F.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                attn_mask=mask,
                dropout_p=dropout,
                scale=scaling,
                is_causal=mask is None,
                enable_gqa=gqa,
            )
        )
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_sdpa_attention)


def use_varlen_attention(model) -> bool:
    """Switch an sdpa model to per-sample attention; False (unchanged) for anything else."""
    if getattr(model.config, "_attn_implementation", None) != BASE:
        return False
    register()
    model.set_attn_implementation(NAME)
    return True


def restore_attention(model) -> None:
    """Back to sdpa after training: generation and padded batches need its masks."""
    if getattr(model.config, "_attn_implementation", None) == NAME:
        model.set_attn_implementation(BASE)
