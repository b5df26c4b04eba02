"""The transformers side of a scheduler step: one forward pass with a per-sequence KV cache."""

from __future__ import annotations

import torch

from lmforge.compat import cache_keyword, output_cache
from lmforge.infer.adapters import AdapterSwitch
from lmforge.infer.scheduler import Sequence

# Prompt tokens fed per step. A long prompt goes in over several rounds, so it delays the other
# active requests by one chunk per round rather than by its whole prefill.
PREFILL_CHUNK = 256


class HFRunner:
    def __init__(self, model, adapters: AdapterSwitch | None = None, prefill_chunk: int = 0):
        self.model = model.eval()
        self.adapters = adapters
        self.prefill_chunk = prefill_chunk or PREFILL_CHUNK
        self.device = model.device
        config = getattr(model, "config", None)
        self.max_length = int(getattr(config, "max_position_embeddings", None) or 1 << 30)
        self.cache_keyword = cache_keyword(model)  # `cache` (transformers >= 5.24) or the old name

    def activate(self, adapter: str | None) -> None:
        if self.adapters is not None:
            self.adapters.activate(adapter)

    @torch.inference_mode()
    def step(self, seq: Sequence) -> torch.Tensor | None:
        """Feed the ids the cache lacks (a prompt chunk, or the last sampled token)."""
        feed = seq.ids[seq.cached : seq.cached + self.prefill_chunk]
        out = self.model(
            input_ids=torch.tensor([feed], device=self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_keyword: seq.cache},
        )
        seq.cache = output_cache(out)
        seq.cached += len(feed)
        return out.logits[0, -1] if seq.cached == len(seq.ids) else None
