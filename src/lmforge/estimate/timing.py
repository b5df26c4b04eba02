"""FLOPs of the run and the time they take on a device at lmforge's measured MFU.

Counted as benchmarks/flops.py counts them (multiply-add = 2 FLOPs), per token:

    linear layers  2·N forward; backward 2·N to the activations (layers behind which something
                   trains) + 2·N_trained for the weight gradients; LoRA 6·N_lora
    attention      12·heads·head_dim per causal (query, key) pair within a sample (4 forward)
    output head    4·hidden·vocab per trained position with the chunked loss (every position
                   with the plain loss), + 2·hidden·vocab when the head trains
    recompute      gradient checkpointing runs the forward twice
    reference      dpo, kto and ASFT run each batch forward through the reference model too

Padding is computed work too (padded rows), so the positions computed, not only the real
tokens, are counted for the time; MFU (gpus.yaml) is the share of the peak lmforge reaches.
On a CPU each step adds the work that is not matmuls (step_overhead.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmforge.config.schema import ADAPTER_TYPES
from lmforge.estimate.batches import Lengths
from lmforge.estimate.model_shape import ModelShape
from lmforge.estimate.settings import Settings


@dataclass(frozen=True)
class TimeEstimate:
    steps: int
    real_tokens: int  # of the whole run
    positions: int  # computed, padding included
    flops_per_token: float  # average, per real token
    total_flops: float
    tokens_per_second: float  # real tokens/s of all devices together
    seconds: float
    overhead_per_step: float = 0.0  # seconds per optimizer step besides the FLOPs (CPU)


def causal_pairs(length: int, window: int | None) -> int:
    if window is None or window >= length:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


def flops(
    shape: ModelShape, settings: Settings, lengths: Lengths, run: dict, *, chunked: bool
) -> float:
    """Model FLOPs of the whole run described by `run` (batches.run_tokens)."""
    layers = shape.layers
    first = shape.first_trained_layer if shape.first_trained_layer is not None else layers
    on_path = (layers - first) / layers
    linear = shape.linear_params
    lora = shape.trainable_params if settings.finetuning_type in ADAPTER_TYPES else 0
    trained_linear = 0.0
    if settings.finetuning_type not in ADAPTER_TYPES:
        trained_linear = linear * min(shape.trained_layers, layers) / layers
    forward = 2 * linear + 2 * lora
    backward = 2 * linear * on_path + 4 * lora + 2 * trained_linear
    recompute = forward if settings.gradient_checkpointing else 0
    per_position = forward + backward + recompute
    pairs_per_token = _pairs_per_token(shape, lengths)
    attn = 4 * shape.heads * shape.head_dim * pairs_per_token * (1 + 2 * on_path)
    head = 4 * shape.hidden * shape.vocab
    if settings.finetuning_type == "full":
        head += 2 * shape.hidden * shape.vocab
    head_positions = run["trained_tokens"] if chunked else run["positions"]
    total = per_position * run["positions"] + attn * run["real_tokens"] + head * head_positions
    if settings.reference_forward:  # the reference's forward pass over the same batches
        attn_forward = 4 * shape.heads * shape.head_dim * pairs_per_token
        total += (
            2 * linear * run["positions"]
            + attn_forward * run["real_tokens"]
            + 2 * shape.hidden * shape.vocab * head_positions
        )
    return total


def _pairs_per_token(shape: ModelShape, lengths: Lengths) -> float:
    """Average (query, key) pairs per token, summed over the layers."""
    tokens = np.asarray(lengths.tokens, dtype=np.int64)
    total = max(int(tokens.sum()), 1)
    pairs = 0
    for window in shape.windows:
        pairs += sum(causal_pairs(int(n), window) for n in tokens)
    return pairs / total


def estimate_time(
    total_flops: float,
    run: dict,
    *,
    peak_flops: float,
    mfu: float,
    devices: int,
    overhead_per_step: float = 0.0,
) -> TimeEstimate:
    """`overhead_per_step`: seconds each optimizer step adds besides its FLOPs (the processes
    run theirs side by side)."""
    rate = peak_flops * mfu * max(devices, 1)
    seconds = total_flops / rate if rate else float("inf")
    seconds += run["steps"] * overhead_per_step
    per_token = total_flops / max(run["real_tokens"], 1)
    return TimeEstimate(
        steps=run["steps"],
        real_tokens=run["real_tokens"],
        positions=run["positions"],
        flops_per_token=per_token,
        total_flops=total_flops,
        tokens_per_second=run["real_tokens"] / seconds if seconds else 0.0,
        seconds=seconds,
        overhead_per_step=overhead_per_step,
    )
