"""Peak device memory of a training step, term by term.

    peak = weights + gradients + optimizer states + reference/reward models + framework
           + max(activations + loss buffers,  optimizer-step workspace,  rollout KV cache)

The activations are what autograd keeps for the backward pass of the largest batch, counted
per token and decoder layer from the model's shapes (measured against torch's saved tensors on
Llama- and Gemma-shaped models: tests/estimate/test_memory.py):

    frozen or LoRA layer   (n_norms + 2)·h + (2 + qk)·q + (2 + qk)·kv + 4·i + r·(adapted linears)
    layer whose weights train   + n_norms·h + qk·(q + kv)  (norm outputs for the weight grads)

with h the hidden size, q/kv the query and key/value widths, i the MLP width, n_norms the norms
on the hidden size in a layer (LLaMA 2, Gemma 3 4) and qk 1 when queries and keys are normed.
A gated MLP keeps 4·i (gate, up, act(gate), their product), 3·i with lmforge's lean MLP
(model/gated_mlp.py); a plain MLP 2·i. Attention adds 4 bytes per head (log-sum-exp) and, where
a mask is built (padded rows, or a sample longer than a sliding window), 4 bytes per (query, key)
pair. Layers before the first one that trains keep nothing (nothing behind them needs a
gradient). Gradient checkpointing keeps each layer's input (h) and one layer's activations.

The loss: lmforge's chunked loss (train/losses/linear_ce.py) keeps one logits chunk and the
trained positions' hidden states and their gradient; the plain loss keeps fp32 logits, their
log-softmax and its gradient for every position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.estimate.batches import Batch
from lmforge.estimate.model_shape import ModelShape
from lmforge.estimate.settings import Settings, optimizer_bytes_per_param

GIB = 2**30
MIB = 2**20

# Framework memory besides the terms: on a GPU the CUDA context and kernels (not counted by
# torch's allocator) plus the allocator's slack; on the CPU the Python process with torch,
# transformers, the tokenizer and the data (measured: docs/estimate.md).
CUDA_CONTEXT_BYTES = 600 * MIB
CUDA_ALLOCATOR_SLACK = 0.08  # reserved but unused by the caching allocator, share of the rest
CPU_PROCESS_BYTES = 820 * MIB  # measured with Gemma 3's 262k-token tokenizer loaded
# Peak RSS on the CPU holds more than what is alive: glibc keeps the heap that the previous
# step's activations (tensors of a few MB) were freed from, and the next step allocates anew
# (measured: RSS grows by the activations in each of the first steps; docs/estimate.md).
CPU_RETENTION = 0.75
# NF4 with double quantization: 4 bits plus 8-bit block scales per 64 weights and fp32 scales
# of those per 256 blocks.
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)


PEAK_GROUP = (
    "activations",
    "loss buffers",
    "allocator (CPU)",
    "optimizer step",
    "rollout KV cache",
)


@dataclass
class Estimate:
    """Peak memory of one device, by term (bytes), and what it was computed from."""

    terms: dict[str, int]
    details: dict[str, str] = field(default_factory=dict)  # term -> how it was counted
    peak_group: tuple[str, ...] = ()  # terms of which only the largest group counts at once
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        fixed = sum(v for k, v in self.terms.items() if k not in self.peak_group)
        return fixed + self.transient

    @property
    def transient(self) -> int:
        """The largest of the step's phases: backward (activations + loss), the optimizer step,
        generation (rollout KV cache)."""
        t = self.terms
        phases = [
            t.get("activations", 0) + t.get("loss buffers", 0) + t.get("allocator (CPU)", 0),
            t.get("optimizer step", 0),
            t.get("rollout KV cache", 0),
        ]
        return max(phases)


def param_bytes(settings: Settings) -> int:
    """Bytes of a trainable parameter (and its gradient): fp32, or bf16 with pure_bf16."""
    return 2 if settings.pure_bf16 else 4


def weights_bytes(shape: ModelShape, settings: Settings) -> tuple[int, str]:
    trainable, total = shape.trainable_params, shape.total_params
    frozen = total - trainable
    if settings.quantization_bit:
        bits = NF4_BITS if settings.quantization_bit == 4 else 8.0
        quantized = shape.linear_params
        rest = frozen - quantized  # embeddings, norms: fp32 after prepare_model_for_kbit_training
        size = int(quantized * bits / 8) + rest * 4 + trainable * 4
        what = (
            f"{quantized:,} quantized at {bits:.2f} bits, {rest:,} fp32, {trainable:,} "
            "trainable fp32"
        )
    else:
        wb, pb = settings.weight_bytes, param_bytes(settings)
        size = frozen * wb + trainable * pb
        what = f"{frozen:,} frozen x {wb} B + {trainable:,} trainable x {pb} B"
    if settings.zero_stage == 3:
        if settings.offload_param:
            gathered = 2 * shape.largest_layer_params * settings.weight_bytes
            return gathered, f"ZeRO-3 offloaded to CPU; two layers gathered at a time ({what})"
        sharded = (
            size // settings.world_size + 2 * shape.largest_layer_params * settings.weight_bytes
        )
        return sharded, f"ZeRO-3: 1/{settings.world_size} each + two gathered layers ({what})"
    return size, what


def estimate_memory(
    shape: ModelShape, settings: Settings, batch: Batch, *, device_kind: str
) -> Estimate:
    est = Estimate(terms={}, peak_group=PEAK_GROUP)
    terms, details = est.terms, est.details
    n = settings.world_size
    trainable = shape.trainable_params
    pb = param_bytes(settings)

    terms["weights"], details["weights"] = weights_bytes(shape, settings)

    grads = trainable * pb
    details["gradients"] = f"{trainable:,} trainable x {pb} B"
    if settings.zero_stage >= 2:
        grads //= n
        details["gradients"] += f", ZeRO-{settings.zero_stage}: 1/{n} each"
    terms["gradients"] = grads

    per_param, known = optimizer_bytes_per_param(settings.optim, pb)
    states = int(trainable * per_param)
    details["optimizer states"] = f"{settings.optim}: {per_param:g} B x {trainable:,}"
    if not known:
        est.notes.append(f"optim {settings.optim}: states counted as AdamW's (two per parameter)")
    if settings.zero_stage >= 1:
        if settings.offload_optimizer:
            states = 0
            details["optimizer states"] += ", offloaded to CPU (ZeRO)"
        else:
            states //= n
            details["optimizer states"] += f", ZeRO: 1/{n} each"
    terms["optimizer states"] = states
    # torch's foreach AdamW builds one temporary per parameter (sqrt of the second moment).
    step = 0 if settings.offload_optimizer else int(trainable * pb * (1 if per_param else 0))
    if settings.zero_stage >= 1:
        step //= n
    terms["optimizer step"] = step
    details["optimizer step"] = "the update's temporaries (one per trainable parameter)"

    extra_models = 0
    if settings.reference_copy:
        extra_models += shape.total_params * settings.weight_bytes
        details["reference model"] = "a frozen copy of the model"
    if settings.reward_model:
        extra_models += shape.total_params * settings.weight_bytes
        details["reference model"] = "reward model (taken as the same size as the policy)"
    if extra_models:
        terms["reference model"] = extra_models // (n if settings.zero_stage == 3 else 1)

    terms["activations"], details["activations"] = activation_bytes(shape, settings, batch)
    terms["loss buffers"], details["loss buffers"] = loss_bytes(shape, settings, batch)
    if settings.generated_tokens:
        rows = settings.batch_size * settings.generations
        length = batch.row_len
        kv = rows * length * shape.layers * 2 * shape.kv_size * settings.activation_bytes
        terms["rollout KV cache"] = kv
        details["rollout KV cache"] = f"{rows} rows x {length} tokens, keys and values per layer"

    if device_kind == "cpu":
        terms["allocator (CPU)"] = int(CPU_RETENTION * terms["activations"])
        details["allocator (CPU)"] = (
            f"{CPU_RETENTION:.0%} of the activations: freed activations glibc keeps from the "
            "step before"
        )
    base = sum(terms.values()) - sum(terms.get(k, 0) for k in est.peak_group) + est.transient
    if device_kind == "cuda":
        terms["framework"] = CUDA_CONTEXT_BYTES + int(base * CUDA_ALLOCATOR_SLACK)
        details["framework"] = (
            f"CUDA context {CUDA_CONTEXT_BYTES // MIB} MiB + allocator slack "
            f"{CUDA_ALLOCATOR_SLACK:.0%}"
        )
    else:
        terms["framework"] = CPU_PROCESS_BYTES
        details["framework"] = "the Python process: torch, transformers, tokenizer, data"
    return est


def uses_chunked_loss(shape: ModelShape, settings: Settings) -> bool:
    return settings.chunked_loss and not shape.head_adapted


def activation_bytes(shape: ModelShape, settings: Settings, batch: Batch) -> tuple[int, str]:
    a = settings.activation_bytes
    h, q, kv, i = shape.hidden, shape.q_size, shape.kv_size, shape.intermediate
    qk = 1 if shape.qk_norm else 0
    if shape.gated_mlp:
        mlp = 3 if settings.lean_mlp else 4
    else:
        mlp = 2
    frozen_layer = (shape.norms_per_layer + 2) * h + (2 + qk) * (q + kv) + mlp * i
    frozen_layer += shape.lora_linears_per_layer * shape.lora_rank
    trained_extra = shape.norms_per_layer * h + qk * (q + kv)
    first = shape.first_trained_layer
    if first is None:
        return 0, "nothing trains"
    on_path = shape.layers - first  # layers behind which something trains
    if settings.finetuning_type == "lora":
        trained_layers = 0
    else:
        trained_layers = min(shape.trained_layers, on_path)
    positions = batch.positions
    if batch.flattened and settings.per_sample_attention:
        frozen_layer += q  # per-sample attention keeps its output once more, joined
    per_token = on_path * frozen_layer + trained_layers * trained_extra
    elements = per_token * positions
    lse = on_path * shape.heads * 4 * positions  # fp32 log-sum-exp per head
    mask = _mask_bytes(shape, batch, first)
    outside = 3 * h * positions * a  # embeddings out, final norm in and out
    full = elements * a + lse + mask
    if settings.gradient_checkpointing:
        layer = (frozen_layer + (trained_extra if trained_layers else 0)) * positions * a
        layer += shape.heads * 4 * positions + mask // max(on_path, 1)
        kept = on_path * h * positions * a + layer + outside
        return kept, (
            f"gradient checkpointing: {on_path} layer inputs + one layer recomputed, "
            f"{batch.rows} x {batch.row_len} positions"
        )
    what = (
        f"{batch.rows} x {batch.row_len} positions, {on_path} layers x "
        f"{per_token // max(on_path, 1):,} values per token"
    )
    if mask:
        what += f", masks {mask / MIB:.0f} MiB"
    return full + outside, what


def _mask_bytes(shape: ModelShape, batch: Batch, first: int) -> int:
    """fp32 masks the attention keeps where it cannot run causally on its own."""
    total = 0
    for window in shape.windows[first:]:
        if batch.flattened:
            if window is not None:  # a band mask for each sample longer than the window
                total += sum(4 * s * s for s in batch.segments if s >= window)
        elif batch.padded or (window is not None and batch.row_len >= window):
            total += 4 * batch.rows * batch.row_len * batch.row_len
    return total


def loss_bytes(shape: ModelShape, settings: Settings, batch: Batch) -> tuple[int, str]:
    from lmforge.train.losses.linear_ce import chunk_tokens_for

    v, h = shape.vocab, shape.hidden
    a = settings.activation_bytes
    if uses_chunked_loss(shape, settings):
        chunk = min(chunk_tokens_for(v), max(batch.trained, 1))
        logits = chunk * v * 4 + (chunk * v * a if a != 4 else 0)
        hidden = 2 * batch.trained * h * a  # trained positions' hidden states and gradient
        head_grad = shape.vocab * h * 4 if _head_trains(shape, settings) else 0
        size = logits + hidden + head_grad
        what = f"chunked: one {chunk} x {v:,} fp32 logits chunk, {batch.trained} trained positions"
        if head_grad:
            what += ", the output head's gradient"
        return size, what
    positions = batch.positions
    size = 3 * positions * v * 4 + (positions * v * a if a != 4 else 0)
    return size, f"full logits: {positions} positions x {v:,} (fp32 logits, log-softmax, gradient)"


def _head_trains(shape: ModelShape, settings: Settings) -> bool:
    return settings.finetuning_type == "full"
