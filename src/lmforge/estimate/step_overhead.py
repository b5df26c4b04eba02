"""What a training step costs on a CPU besides the matmuls the FLOP count times (timing.py).

A step with few tokens is not FLOP-bound: the host runs the same ~2,000 operator calls per
decoder layer whatever the batch holds, and weight-sized tensors are streamed or made anew
every step. Measured on the 2-core machine of docs/estimate.md (Gemma-3-270M, bf16): a LoRA
step of 19 tokens took 0.30 s where its FLOPs take 0.07 s; a full fine-tuning step of 59 tokens
1.6 s where they take 0.4 s. So the time of a run is FLOPs / (peak x MFU) plus, per step:

    per micro-batch   host work: layers x (cpu_host_ms.layer + cpu_host_ms.adapted_linear x
                      LoRA-adapted linears per layer), from gpus.yaml (measured, by profile)
                      the weights streamed twice (forward, and backward to the activations)
                      fp32 weights under 16-bit autocast (full fine-tuning): each cast anew
                      a trained head tied to the embeddings: both dense gradients made anew
    per update        gradients made anew (zero_grad sets them to None)
                      the optimizer's pass: parameter, gradient and states read, and written

at the two memory rates measured now (devices.cpu_memory_rates). On a GPU the MFU measured on
whole jobs stands for all of it, so this is zero there.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.estimate.devices import Device, card_table
from lmforge.estimate.memory import head_trains, param_bytes, uses_chunked_loss, weights_bytes
from lmforge.estimate.model_shape import ModelShape
from lmforge.estimate.settings import Settings, optimizer_bytes_per_param


@dataclass(frozen=True)
class StepOverhead:
    per_batch: float = 0.0  # seconds per micro-batch
    per_update: float = 0.0  # seconds per optimizer step

    def per_step(self, accumulation: int) -> float:
        """Seconds per optimizer step of one process (each runs `accumulation` batches)."""
        return max(accumulation, 1) * self.per_batch + self.per_update


def step_overhead(shape: ModelShape, settings: Settings, device: Device) -> StepOverhead:
    if device.kind != "cpu" or not device.read_bytes_per_s or not device.fresh_bytes_per_s:
        return StepOverhead()
    read, fresh = device.read_bytes_per_s, device.fresh_bytes_per_s
    host = card_table()["cpu_host_ms"]
    layer_ms = host["layer"]
    if settings.finetuning_type == "lora":
        layer_ms += host["adapted_linear"] * shape.lora_linears_per_layer
    pb = param_bytes(settings)
    weights, _ = weights_bytes(shape, settings)
    streamed, made = 2 * weights, 0
    if settings.mixed_precision:  # fp32 weights, each cast to 16 bits in every forward pass
        streamed += 4 * shape.total_params
        made += 2 * shape.total_params
    if _trains_tied_head(shape, settings):
        made += 2 * shape.vocab * shape.hidden * pb
    per_batch = shape.layers * layer_ms / 1000 + streamed / read + made / fresh
    states, _ = optimizer_bytes_per_param(settings.optim, pb)
    trainable = shape.trainable_params
    optimizer_pass = trainable * (2 * states + 3 * pb)  # states and parameter both ways, gradient
    return StepOverhead(per_batch, trainable * pb / fresh + optimizer_pass / read)


def _trains_tied_head(shape: ModelShape, settings: Settings) -> bool:
    """Full fine-tuning of a model whose head is its embedding matrix: the chunked loss's head
    gradient and the embedding's own dense one are both made anew every batch, then added."""
    return (
        head_trains(shape, settings)
        and shape.head_params == 0
        and uses_chunked_loss(shape, settings)
    )
