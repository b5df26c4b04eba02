"""Attention kernels for packed and padding-free rows: one flattened row, sample boundaries given.

Each function has transformers' attention signature (registered through AttentionInterface by
model/varlen_attention.py) and reads the boundaries our collator computes once per batch on the
host: `cu_seq_lens_q` (a device tensor, int32) and `max_length_q` (a Python int). None of them
turns a device tensor into a Python value, so a CUDA step never waits for the GPU inside the
model: one `.tolist()` per layer costs a device synchronisation each (Step 8's profile).

- `per_sample_sdpa`: one causal sdpa call per sample (the CPU path: sdpa with a row-wide
  block-diagonal mask would compute every pair of the row; benchmarks/PROFILE.md). It reads the
  boundaries as Python numbers, which is free on the CPU.
- `torch_varlen`: `torch.nn.attention.varlen.varlen_attn` (torch >= 2.10), flash-attention
  inside torch; no extra package.
- `flash_attn_varlen`: the flash-attn package's `flash_attn_varlen_func`.
- `flex_document`: FlexAttention with a document mask (fp32, logit softcapping, or a torch
  without varlen_attn).

Grouped-query attention runs natively in all of them (no key/value heads repeated), and sliding
windows are applied inside each sample as transformers does: a key is seen when it is fewer than
`sliding_window` positions back.
"""

from __future__ import annotations

import inspect
import weakref
from functools import cache

import torch
import torch.nn.functional as F


def _bounds(kwargs: dict, name: str, query: torch.Tensor, attention_mask) -> tuple:
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or attention_mask is not None:
        raise RuntimeError(
            f"{name} runs on one flattened row with cu_seq_lens_q (lmforge's packed collator); "
            "this call has none"
        )
    return bounds, kwargs.get("max_length_q")


def _left_window(sliding_window: int | None) -> int:
    """flash-attention's left window for transformers' `sliding_window` (-1: unlimited)."""
    return -1 if sliding_window is None else sliding_window - 1


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    """flash kernels take fp16/bf16 only: under autocast, q/k/v can arrive in fp32 (rotary
    embeddings computed in fp32), and sdpa would have cast them to the autocast dtype too."""
    if query.dtype in (torch.float16, torch.bfloat16):
        return query.dtype
    device = query.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    raise RuntimeError(
        f"flash-attention kernels run in float16/bfloat16, and this call is {query.dtype} "
        "without autocast (lmforge picks FlexAttention for fp32 training)"
    )


def _flat(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(1, heads, tokens, dim) -> (tokens, heads, dim): the layout varlen kernels read."""
    return tensor[0].transpose(0, 1).to(dtype)


def per_sample_sdpa(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout=0.0,
    scaling=None,
    sliding_window=None,
    **kwargs,
):
    bounds, _ = _bounds(kwargs, "per-sample sdpa", query, attention_mask)
    if kwargs.get("softcap") is not None:
        raise RuntimeError(
            "per-sample sdpa, like sdpa, does not support attention logit softcapping"
        )
    gqa = query.shape[1] != key.shape[1]  # native: repeated heads would be kept for backward
    edges = bounds.tolist()  # the CPU path: a host tensor, no device to wait for
    outputs = []
    for start, end in zip(edges, edges[1:]):
        length = end - start
        mask = None
        if sliding_window is not None and length > sliding_window:
            position = torch.arange(length, device=query.device)
            distance = position[:, None] - position[None, :]
            mask = (distance >= 0) & (distance < sliding_window)
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


def torch_varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def _varlen_takes_gqa_flag() -> bool:
    """torch 2.13 added `enable_gqa`; torch 2.10-2.12's kernel takes fewer key/value heads as
    they come (flash-attention's own GQA)."""
    from torch.nn.attention.varlen import varlen_attn

    return "enable_gqa" in inspect.signature(varlen_attn).parameters


def torch_varlen(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout=0.0,
    scaling=None,
    sliding_window=None,
    **kwargs,
):
    from torch.nn.attention.varlen import varlen_attn

    bounds, longest = _bounds(kwargs, "torch varlen_attn", query, attention_mask)
    if dropout:
        raise RuntimeError("torch's varlen_attn has no attention dropout")
    if kwargs.get("softcap") is not None:
        raise RuntimeError("torch's varlen_attn does not support attention logit softcapping")
    dtype = _compute_dtype(query)
    extra = {"enable_gqa": True} if _varlen_takes_gqa_flag() else {}
    out = varlen_attn(
        _flat(query, dtype),
        _flat(key, dtype),
        _flat(value, dtype),
        bounds,
        bounds,
        longest,
        longest,
        scale=scaling,
        window_size=(_left_window(sliding_window), 0),  # (-1, 0): causal
        **extra,
    )
    return out[None], None


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def flash_attn_varlen(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout=0.0,
    scaling=None,
    sliding_window=None,
    **kwargs,
):
    from flash_attn import flash_attn_varlen_func

    bounds, longest = _bounds(kwargs, "flash_attn_varlen_func", query, attention_mask)
    dtype = _compute_dtype(query)
    out = flash_attn_varlen_func(
        _flat(query, dtype),
        _flat(key, dtype),
        _flat(value, dtype),
        cu_seqlens_q=bounds,
        cu_seqlens_k=bounds,
        max_seqlen_q=longest,
        max_seqlen_k=longest,
        dropout_p=dropout,
        softmax_scale=scaling,
        causal=True,
        window_size=(_left_window(sliding_window), 0),
        softcap=kwargs.get("softcap") or 0.0,
    )
    return out[None], None


class _BlockMaskCache:
    """One block mask per batch and window size: every layer of a forward pass (and the
    recomputation under gradient checkpointing) gets the same `cu_seq_lens_q` tensor object."""

    def __init__(self):
        self._bounds = lambda: None
        self._masks: dict = {}

    def get(self, bounds: torch.Tensor, tokens: int, window: int | None):
        if self._bounds() is not bounds:
            self._bounds, self._masks = weakref.ref(bounds), {}
        if window not in self._masks:
            self._masks[window] = _document_block_mask(bounds, tokens, window)
        return self._masks[window]


def _document_block_mask(bounds: torch.Tensor, tokens: int, window: int | None):
    from torch.nn.attention.flex_attention import create_block_mask

    position = torch.arange(tokens, device=bounds.device)
    # Which sample each position belongs to, computed on the device (no host round trip).
    document = torch.searchsorted(bounds[1:].to(torch.long), position, right=True)

    def mask(batch, head, q, kv):
        visible = (document[q] == document[kv]) & (q >= kv)
        return visible if window is None else visible & (q - kv < window)

    return create_block_mask(mask, None, None, tokens, tokens, device=bounds.device)


_block_masks = _BlockMaskCache()


@cache
def _flex_function(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    if device_type == "cuda":  # compiled, flex runs fused; uncompiled it builds full scores
        return torch.compile(flex_attention, dynamic=True)
    return flex_attention


def flex_document(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout=0.0,
    scaling=None,
    sliding_window=None,
    **kwargs,
):
    bounds, _ = _bounds(kwargs, "FlexAttention", query, attention_mask)
    if dropout:
        raise RuntimeError("FlexAttention has no attention dropout")
    block_mask = _block_masks.get(bounds, query.shape[2], sliding_window)
    device = query.device.type
    # One dtype for q, k and v: under autocast they can differ (as for sdpa, autocast's wins).
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    query, key, value = (t.to(dtype) for t in (query, key, value))
    softcap = kwargs.get("softcap")
    score_mod = None
    if softcap is not None:

        def score_mod(score, batch, head, q, kv):
            return softcap * torch.tanh(score / softcap)

    out = _flex_function(device)(
        query,
        key,
        value,
        score_mod=score_mod,
        block_mask=block_mask,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None
