"""Packed training on a real model: the KV cache off (transformers ignores restarting position
ids when a cache exists) and a check, before training, that packed samples do not see each other.

The packing itself (which samples share a row) is data/encoding/packing.py.
"""

from __future__ import annotations

import numpy as np

from lmforge.errors import UserError
from lmforge.model.forward_inputs import forward_takes, unwrapped


def prepare_model_for_packing(model) -> None:
    """Turn the KV cache off everywhere: transformers only detects packed sequences (and so only
    isolates them) when a forward pass runs without a cache, and training needs none."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "use_cache", None):
            config.use_cache = False  # generate() still caches: it passes its own use_cache


def check_isolation(model, collator, *, autocast_dtype=None) -> None:
    """Prove that packed samples do not see each other, on this model as configured.

    One batch of two rows, A1+B and A2+B, as training batches several rows; then B alone. With
    isolation, B's logits do not depend on what precedes it (they match to rounding) and equal
    B's logits alone (positions restart). Costs two forward passes of a few dozen tokens.
    `autocast_dtype`: the mixed precision training runs in (flash kernels need half precision)."""
    import contextlib

    import torch

    embeddings = model.get_input_embeddings()
    device = embeddings.weight.device
    vocab = embeddings.weight.shape[0]
    generator = torch.Generator().manual_seed(0)

    def tokens(n: int) -> np.ndarray:
        return torch.randint(0, vocab, (n,), generator=generator).numpy()

    a1, a2, b = tokens(7), tokens(7), tokens(5)

    def logits(rows: list[np.ndarray], lengths: list[int]):
        features = [{"input_ids": ids, "labels": ids, "lengths": lengths} for ids in rows]
        batch = collator(features)
        batch.pop("labels")
        refused = [key for key in batch if not forward_takes(model, key)]
        if refused:  # remote code with a spelled-out forward: a TypeError mid-check otherwise
            raise UserError(
                f"packing: this model's forward ({type(unwrapped(model)).__name__}) does not "
                f"take {', '.join(refused)}, which packed and padding-free rows pass",
                fix="set packing: false and padding_free: false (padded rows work with every "
                "model)",
            )
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        out = model(**batch).logits.float().cpu()
        # Rows of equal length, no padding: padded rows and one flattened row line up.
        return out.reshape(len(rows), -1, out.shape[-1])[:, -len(b) :]

    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        with torch.no_grad(), autocast:
            after_a1, after_a2 = logits([np.concatenate([a, b]) for a in (a1, a2)], [7, 5])
            alone = logits([b], [5])[0]
    finally:
        model.train(was_training)
    scale = max(1.0, alone.abs().max().item())
    half = (torch.float16, torch.bfloat16)
    low_precision = embeddings.weight.dtype in half or autocast_dtype in half
    # Isolated samples differ only by rounding (exactly 0 on CPU); a leak moves logits by O(1).
    tolerance = scale * (2e-2 if low_precision else 1e-3)
    impl = getattr(model.config, "_attn_implementation", "?")
    if (after_a1 - after_a2).abs().max().item() > tolerance:
        raise UserError(
            f"packing: with this model ({model.config.model_type}, attention {impl}) samples "
            "packed into one row attend to each other",
            fix="set packing: false (and neat_packing: false), or use flash_attn: sdpa or fa2",
        )
    if (after_a1 - alone).abs().max().item() > tolerance:
        raise UserError(
            f"packing: this model ({model.config.model_type}, attention {impl}) ignores the "
            "restarting position ids of packed samples",
            fix="set packing: false (and neat_packing: false)",
        )
