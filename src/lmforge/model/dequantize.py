"""The base model as QLoRA computes with it: loaded in 4 or 8 bits as training loads it, the
weights dequantized back to bf16 and saved as a plain model folder. Plain LoRA on that folder is
the reference QLoRA's losses are checked against (benchmarks/gpu/paths.py, tests): the two
differ only by bf16 rounding, where the original base differs by the quantization error."""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.model.load import Quantization, load_model, load_tokenizer


def save_dequantized(model_dir: str | Path, out: str | Path, quantization: Quantization) -> Path:
    """`quantization` as the run trains with it (its compute dtype: the run's, bf16 here)."""
    model = load_model(model_dir, dtype=torch.bfloat16, quantization=quantization)
    # transformers: bitsandbytes layers -> nn.Linear, and the quantization_config dropped
    model = model.dequantize().to(torch.bfloat16)
    out = Path(out)
    model.save_pretrained(out)
    load_tokenizer(model_dir).save_pretrained(out)
    return out
