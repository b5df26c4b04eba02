"""Peak device memory of a training step, term by term.

    peak = weights + optimizer states + reference/reward models + framework
           + max(activations + max(loss buffers, output head),
                 gradients + optimizer-step workspace,  rollout KV cache)

Gradients exist from the backward pass on: the Trainer sets them to None after each optimizer
step, and the backward pass frees each layer's activations as it writes that layer's gradients.
With gradient accumulation (they persist between micro-batches) or DeepSpeed ZeRO (its own
gradient buffers) they are counted throughout.

Weights are fp32, or bf16 under pure_bf16; under bf16 mixed precision LoRA and freeze keep the
frozen ones in bf16 and the trained ones in fp32 (`Settings.frozen_weights_bf16`, from
Precision.frozen_bf16); full fine-tuning and fp16 keep fp32 weights.

The activations are what autograd keeps for the backward pass of the largest batch, counted
per token and decoder layer from the model's shapes (measured against torch's saved tensors on
Llama- and Gemma-shaped models: tests/estimate/test_memory.py). In one dtype (fp32, or
pure_bf16), values x its bytes:

    frozen or LoRA layer   (n_norms + 2)·h + (2 + qk)·q + (2 + qk)·kv + 4·i + r·(adapted linears)
    layer whose weights train   + n_norms·h + qk·(q + kv)  (norm outputs for the weight grads)

with h the hidden size, q/kv the query and key/value widths, i the MLP width, n_norms the norms
on the hidden size in a layer (LLaMA 2, Gemma 3 4) and qk 1 when queries and keys are normed.
A gated MLP keeps 4·i (gate, up, act(gate), their product), 3·i with lmforge's lean MLP
(model/gated_mlp.py) or liger-kernel's; a plain MLP 2·i. Under 16-bit autocast the dtypes differ
per tensor: over fp32 weights (full fine-tuning, fp16) the residual stream and the norms stay
fp32 and each linear layer casts its own 16-bit input (`_mixed_layer_bytes`) and its weight
(`_weight_casts`: every on-path layer's); over bf16 frozen weights (and QLoRA's bf16 base
around its quantized linears) the residual stream is bf16, the norms keep fp32 copies of their
inputs, linear layers share their 16-bit inputs (`_frozen_bf16_layer_bytes`) and only the
trained fp32 weights are cast. Attention adds 4 bytes per head (log-sum-exp) and, where a
mask is built (`_mask_bytes`: padded rows; on the CPU a sample longer than a sliding window;
never for flattened rows on CUDA, whose varlen kernels take the sample boundaries), one value
per (query, key) pair. Layers before the first
one that trains keep nothing (nothing behind them needs a gradient). Gradient checkpointing
keeps each layer's input (h) and one layer's activations.

The loss: lmforge's chunked loss (train/losses/linear_ce.py) takes the decoder's final hidden
states in the model's dtype, keeps the trained positions' ones and their gradient, and projects
them in the autocast dtype one logits chunk of `chunk_tokens_for(vocab, device)` positions at a
time (128 MiB of fp32 logits on the CPU, 512 MiB on CUDA); an fp32 head under autocast is cast
to 16 bits by the model's own one-position head and again by the loss.
liger-kernel's fused loss chunks every position; the plain loss keeps fp32 logits, their
log-softmax and its gradient for every position.

Loading, on the CPU: a checkpoint converted as it loads (fp32 file, bf16 weights) has its file's
pages in memory next to the converted weights until loading ends (`loading_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config.schema import ADAPTER_TYPES
from lmforge.estimate.batches import Batch
from lmforge.estimate.model_shape import ModelShape
from lmforge.estimate.settings import FEWER_THAN_ADAMW, Settings, optimizer_bytes_per_param

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
# glibc serves allocations from 32 MiB up (its largest mmap threshold) with their own mapping,
# returned to the kernel when freed; smaller ones come from the heap it keeps.
GLIBC_MMAP_MAX = 32 * 2**20
# NF4 with double quantization: 4 bits plus 8-bit block scales per 64 weights and fp32 scales
# of those per 256 blocks.
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
SINGLE_QUANT_4BIT_BITS = 4 + 32 / 64  # double_quantization: false: an fp32 scale per 64 weights


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
    loading: int = 0  # the CPU's peak while the weights convert, before training (0: none)
    loading_detail: str = ""

    @property
    def training(self) -> int:
        fixed = sum(v for k, v in self.terms.items() if k not in self.peak_group)
        return fixed + self.transient

    @property
    def total(self) -> int:
        return max(self.training, self.loading)

    @property
    def transient(self) -> int:
        """The largest of the step's phases: the end of the forward pass and the loss
        (activations + the loss's buffers), the optimizer step (with the gradients when they
        are in the peak group), generation."""
        t = self.terms
        grads = t.get("gradients", 0) if "gradients" in self.peak_group else 0
        phases = [
            t.get("activations", 0) + t.get("loss buffers", 0) + t.get("allocator (CPU)", 0),
            grads + t.get("optimizer step", 0),
            t.get("rollout KV cache", 0),
        ]
        return max(phases)


def param_bytes(settings: Settings) -> int:
    """Bytes of a trainable parameter (and its gradient): fp32, or bf16 with pure_bf16."""
    return 2 if settings.pure_bf16 else 4


def quantized_bits(settings: Settings, bits: int) -> float:
    """Bits per weight of a linear layer loaded in `bits` (with its scales)."""
    if bits != 4:
        return 8.0
    return NF4_BITS if settings.double_quantization else SINGLE_QUANT_4BIT_BITS


def quantized_model_bytes(shape: ModelShape, settings: Settings, bits: int) -> int:
    """A model that never trains, its linear layers in `bits`, the rest as frozen weights."""
    rest = shape.total_params - shape.linear_params
    return int(shape.linear_params * quantized_bits(settings, bits) / 8) + rest * (
        settings.frozen_model_bytes
    )


def weights_bytes(shape: ModelShape, settings: Settings) -> tuple[int, str]:
    trainable, total = shape.trainable_params, shape.total_params
    frozen = total - trainable
    if settings.quantization_bit:
        bits = quantized_bits(settings, settings.quantization_bit)
        quantized = shape.linear_params
        rest = frozen - quantized  # embeddings, norms, head: bf16 under bf16, else fp32
        wb = settings.weight_bytes
        size = int(quantized * bits / 8) + rest * wb + trainable * 4
        what = (
            f"{quantized:,} quantized at {bits:.2f} bits, {rest:,} {'bf16' if wb == 2 else 'fp32'}"
            f", {trainable:,} trainable fp32"
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
    grads_persist = settings.accumulation > 1 or settings.zero_stage > 0
    est = Estimate(terms={}, peak_group=PEAK_GROUP + (() if grads_persist else ("gradients",)))
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
        fewer = settings.optim in FEWER_THAN_ADAMW
        est.notes.append(
            f"optimizer {settings.optim}: states counted as AdamW's (two per parameter)"
            + (", more than it keeps" if fewer else "")
        )
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
    if settings.reference_copy:  # a deep copy: each weight in the policy's dtype
        extra_models += (shape.total_params - trainable) * settings.weight_bytes + trainable * pb
        details["reference model"] = "a frozen copy of the model"
    loaded = [  # models that never train: bf16 under bf16 (Precision.frozen_model_dtype)
        *(["ref_model"] if settings.reference_loaded else []),
        *(["reward model"] if settings.reward_model else []),
    ]
    if loaded:
        dtype = "bf16" if settings.frozen_model_bytes == 2 else "fp32"
        bits = {"ref_model": settings.reference_bits, "reward model": settings.reward_bits}
        for i, name in enumerate(loaded):
            if bits[name]:
                extra_models += quantized_model_bytes(shape, settings, bits[name])
                loaded[i] = f"{name} ({bits[name]}-bit linear layers)"
            else:
                extra_models += shape.total_params * settings.frozen_model_bytes
        text = f"{' and '.join(loaded)} in {dtype} (taken as the same size as the policy)"
        copy = details.get("reference model")  # the copy and a reward model (ppo, full)
        details["reference model"] = f"{copy}; {text}" if copy else text
    if extra_models:
        terms["reference model"] = extra_models // (n if settings.zero_stage == 3 else 1)

    terms["activations"], details["activations"] = activation_bytes(
        shape, settings, batch, device_kind
    )
    terms["loss buffers"], details["loss buffers"] = loss_bytes(shape, settings, batch, device_kind)
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
        if not grads_persist and (kept := _heap_gradient_bytes(shape, settings)):
            terms["allocator (CPU)"] += kept
            details["allocator (CPU)"] += f"; the layers' freed gradients {kept / GIB:.2f} GiB"
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
        est.loading, est.loading_detail = loading_bytes(shape, settings, terms)
    return est


def loading_bytes(shape: ModelShape, settings: Settings, terms: dict[str, int]) -> tuple[int, str]:
    """The CPU's peak while the model loads, before anything trains: a checkpoint in another
    dtype than the one loaded (an fp32 file loaded in bf16, or quantized) is read through its
    memory map, and its pages count in the process's memory until loading ends, next to the
    converted weights (measured: gemma-3-270m's fp32 file to bf16, 1.6 GiB above the
    process's; loaded as fp32, the file's pages are the weights). 0 when no conversion."""
    file_bytes = shape.checkpoint_param_bytes
    converted = settings.quantization_bit or file_bytes != settings.weight_bytes
    if not file_bytes or not converted:
        return 0, ""
    checkpoint = shape.total_params * file_bytes
    size = terms["framework"] + terms["weights"] + checkpoint
    return size, (
        f"framework + weights + the checkpoint's pages while loading converts them "
        f"({shape.total_params:,} x {file_bytes} B)"
    )


def uses_chunked_loss(shape: ModelShape, settings: Settings) -> bool:
    return settings.chunked_loss and not shape.head_adapted


def activation_bytes(
    shape: ModelShape, settings: Settings, batch: Batch, device_kind: str = "cpu"
) -> tuple[int, str]:
    a = settings.activation_bytes
    h = shape.hidden
    first = shape.first_trained_layer
    if first is None:
        return 0, "nothing trains"
    on_path = shape.layers - first  # layers behind which something trains
    if settings.finetuning_type in ADAPTER_TYPES:
        trained_layers = 0
    else:
        trained_layers = min(shape.trained_layers, on_path)
    positions = batch.positions
    if settings.frozen_weights_bf16:
        frozen_layer, trained_extra = _frozen_bf16_layer_bytes(shape, settings, batch, device_kind)
        residual = 2  # the residual stream is in the weights' bf16
        # the final norm's fp32 copy of its input (liger's keeps the input) and its output
        outside = ((a if settings.liger else 4) + 2) * h * positions
    else:
        if settings.mixed_precision:
            frozen_layer, trained_extra = _mixed_layer_bytes(shape, settings, batch, device_kind)
            residual = 4  # the residual stream stays in the weights' fp32
        else:
            frozen_layer, trained_extra = _uniform_layer_bytes(shape, settings, batch)
            residual = a
        outside = 3 * h * positions * residual  # embeddings out, final norm in and out
    per_token = on_path * frozen_layer + trained_layers * trained_extra
    lse = on_path * shape.heads * 4 * positions  # fp32 log-sum-exp per head
    mask = _mask_bytes(shape, settings, batch, first, device_kind)
    casts = _weight_casts(shape, settings, on_path)
    if settings.gradient_checkpointing:
        layer = (frozen_layer + (trained_extra if trained_layers else 0)) * positions
        layer += shape.heads * 4 * positions + mask // max(on_path, 1)
        layer += casts // max(on_path, 1)
        kept = on_path * h * positions * residual + layer + outside
        return kept, (
            f"gradient checkpointing: {on_path} layer inputs + one layer recomputed, "
            f"{batch.rows} x {batch.row_len} positions"
        )
    what = (
        f"{batch.rows} x {batch.row_len} positions, {on_path} layers x "
        f"{per_token // max(on_path, 1):,} bytes per token"
    )
    if mask:
        what += f", masks {mask / MIB:.0f} MiB"
    if casts:
        what += f", 16-bit copies of the layers' fp32 weights {casts / MIB:.0f} MiB"
    return per_token * positions + lse + mask + outside + casts, what


def _mlp_values(shape: ModelShape, settings: Settings) -> int:
    """Values per token a layer's MLP keeps, in units of its width: a gated MLP keeps gate, up,
    act(gate) and their product; lmforge's lean MLP and liger's kernels recompute act(gate)."""
    if not shape.gated_mlp:
        return 2
    return 3 if (settings.lean_mlp or settings.liger) else 4


def _uniform_layer_bytes(shape: ModelShape, settings: Settings, batch: Batch) -> tuple[int, int]:
    """Bytes per token of one layer when everything runs in one dtype (fp32 training, or
    pure_bf16): (a frozen or LoRA layer, the extra of a layer whose weights train)."""
    a = settings.activation_bytes
    h, q, kv, i = shape.hidden, shape.q_size, shape.kv_size, shape.intermediate
    qk = 1 if shape.qk_norm else 0
    values = (
        (shape.norms_per_layer + 2) * h + (2 + qk) * (q + kv) + _mlp_values(shape, settings) * i
    )
    values += shape.lora_linears_per_layer * shape.lora_rank
    if batch.flattened and settings.per_sample_attention:
        values += q  # per-sample attention keeps its output once more, joined
    return values * a, (shape.norms_per_layer * h + qk * (q + kv)) * a


def _mixed_layer_bytes(
    shape: ModelShape, settings: Settings, batch: Batch, device_kind: str
) -> tuple[int, int]:
    """Bytes per token of one layer under 16-bit autocast over fp32 weights, as torch's saved
    tensors show (tests/estimate/test_memory.py): the norms keep fp32 inputs (4 bytes), every
    linear layer that needs its input for a weight gradient keeps its own 16-bit copy of it
    (autocast casts the fp32 input on each call), attention keeps 16-bit q, k, v and output.
    Returns (a frozen or LoRA layer, the extra of a layer whose weights train)."""
    a = settings.activation_bytes
    h, q, kv, i = shape.hidden, shape.q_size, shape.kv_size, shape.intermediate
    qk = 1 if shape.qk_norm else 0
    # transformers' RMSNorm upcasts its input to fp32 and keeps that; the residual stream is
    # fp32 already, the 16-bit q and k are copied (liger's RMSNorm keeps them as they come)
    norms = 4 * shape.norms_per_layer * h + (a if settings.liger else 4) * qk * (q + kv)
    attention = a * (2 * q + 2 * kv)
    mlp = _mlp_values(shape, settings)
    lora = shape.lora_linears_per_layer > 0
    # LoRA: the MLP's last linear reads a copy of the product (counted in the input width)
    mlp_kept = (mlp - 1 if lora else 0) * i
    lora_layer = norms + attention + a * (shape.lora_input_width + mlp_kept)
    lora_layer += a * shape.lora_linears_per_layer * shape.lora_rank
    # weights train: q, k, v and the MLP's input linears each cast the normed hidden state;
    # the output projection reads the attention's output itself (joined first on the CPU)
    reads_hidden = 3 + (2 if shape.gated_mlp else 1)
    joined = (
        q if (batch.flattened and settings.per_sample_attention and device_kind == "cpu") else 0
    )
    # trained norm weights need the normalized output too (liger's recompute it from the input)
    norm_outputs = 0 if settings.liger else norms
    trained_layer = norms + attention + a * (reads_hidden * h + mlp * i + joined) + norm_outputs
    if settings.finetuning_type in ADAPTER_TYPES:
        return lora_layer, 0
    return lora_layer, trained_layer - lora_layer


def _frozen_bf16_layer_bytes(
    shape: ModelShape, settings: Settings, batch: Batch, device_kind: str
) -> tuple[int, int]:
    """Bytes per token of one layer under bf16 autocast over bf16 frozen weights (LoRA/freeze,
    `frozen_weights_bf16`), as torch's saved tensors show (tests/estimate/test_memory.py): the
    residual stream is bf16; RMSNorm computes in fp32 and keeps its fp32 copy of the input
    (liger's keeps the input); linear layers read their 16-bit input as it is, so q, k and v
    share the normed hidden state, gate and up theirs (peft's cast of LoRA inputs to fp32 is off
    while training); attention keeps q, k, v and its output. A layer whose weights train (fp32):
    its norms keep the normalized values for the weight gradients (LLaMA's RMSNorm in bf16,
    Gemma's in fp32), and where the norm's output is fp32 (LLaMA's: fp32 weight x bf16), q, k,
    v and the MLP's input linears each cast it to bf16. Returns (a frozen or LoRA layer, the
    extra of a layer whose weights train)."""
    a = 2
    h, q, kv, i = shape.hidden, shape.q_size, shape.kv_size, shape.intermediate
    qk = 1 if shape.qk_norm else 0
    normed = shape.norms_per_layer * h + qk * (q + kv)  # values the norms read per token
    norm_inputs = (a if settings.liger else 4) * normed
    attention = a * (2 * q + 2 * kv)
    mlp = _mlp_values(shape, settings)
    joined = (
        q if (batch.flattened and settings.per_sample_attention and device_kind == "cpu") else 0
    )
    # LoRA: the adapted linears' inputs, each tensor once (the MLP's last linear reads the
    # product, counted there; the output projection the attention's output, joined first on
    # the CPU)
    lora_inputs = shape.lora_shared_input_width + (
        joined if shape.lora_reads_attention_output else 0
    )
    lora_layer = norm_inputs + attention + a * ((mlp - 1) * i + lora_inputs)
    lora_layer += a * shape.lora_linears_per_layer * shape.lora_rank
    if settings.finetuning_type in ADAPTER_TYPES:
        return lora_layer, 0
    bf16_out = shape.norm_keeps_input_dtype or settings.liger
    # q/k/v and gate/up share the attention's and the MLP's bf16 norm output, or cast their own
    reads = 2 * h if bf16_out else (3 + (2 if shape.gated_mlp else 1)) * h
    norm_outputs = 0 if settings.liger else (4 if shape.norm_keeps_input_dtype else a) * normed
    trained_layer = norm_inputs + norm_outputs + attention + a * (reads + mlp * i + joined)
    return lora_layer, trained_layer - lora_layer


def _weight_casts(shape: ModelShape, settings: Settings, on_path: int) -> int:
    """Autocast casts each fp32 linear weight to 16 bits on every call, and autograd keeps the
    copy until the backward pass (a frozen weight for the input's gradient; a trained one is
    kept in autocast's cache): one 16-bit copy of each on-path layer's fp32 linear weights -
    every one over fp32 weights, only the trained ones (LoRA's adapters, freeze's layers) with
    frozen_bf16 (QLoRA's too: a quantized base dequantizes on the fly and keeps nothing)."""
    if not settings.autocast_16bit or settings.pure_bf16:
        return 0
    layers = max(shape.layers, 1)
    lora = settings.finetuning_type in ADAPTER_TYPES
    if settings.frozen_weights_bf16:
        if lora:
            return on_path * (shape.trainable_params // layers) * settings.activation_bytes
        trained = min(shape.trained_layers, on_path) * (shape.linear_params // layers)
        return min(trained, shape.trainable_params) * settings.activation_bytes
    per_layer = shape.linear_params // layers
    if lora:  # the adapters' weights are cast as well
        per_layer += shape.trainable_params // layers
    return on_path * per_layer * settings.activation_bytes


def _mask_bytes(
    shape: ModelShape, settings: Settings, batch: Batch, first: int, device_kind: str = "cpu"
) -> int:
    """Masks attention keeps for the backward pass where it cannot run causally on its own: sdpa
    saves a mask in the query's dtype for each layer (transformers' boolean mask, converted).

    Flattened rows (packing, padding_free) with a variable-length kernel: on CUDA the flash
    kernels (torch varlen_attn, flash-attn, FlexAttention's block mask) need none; on the CPU
    the per-sample sdpa builds a band mask for each sample longer than a sliding window.
    Padded rows: one mask per layer (a sliding window's too when the row reaches it)."""
    a = settings.activation_bytes
    if batch.flattened and settings.per_sample_attention:
        if device_kind == "cuda":
            return 0
        total = 0
        for window in shape.windows[first:]:
            if window is not None:
                total += sum(a * s * s for s in batch.segments if s > window)
        return total
    rows, length = batch.rows, batch.row_len
    total, kinds = 0, set()
    for window in shape.windows[first:]:
        if batch.padded or batch.flattened or (window is not None and length >= window):
            total += a * rows * length * length
            kinds.add(window)
    return total + len(kinds) * rows * length * length  # transformers' boolean masks


def loss_bytes(
    shape: ModelShape, settings: Settings, batch: Batch, device_kind: str = "cpu"
) -> tuple[int, str]:
    """The loss's buffers, alive on top of the activations. The chunked loss takes the final
    hidden states in the model's dtype (fp32; bf16 with pure_bf16 or frozen_bf16) and projects
    them in the autocast dtype (the weights' without autocast)."""
    from lmforge.train.losses.linear_ce import chunk_tokens_for

    v, h = shape.vocab, shape.hidden
    hb = settings.weight_bytes  # the hidden states' dtype
    pb = settings.activation_bytes  # the projection's
    # under autocast over an fp32 head the model's own head (logits of one position, or of all
    # for the plain loss) casts its weight to 16 bits and autograd keeps the copy; the chunked
    # loss casts it once more for its projection
    head_copy = v * h * pb if settings.mixed_precision else 0
    if settings.liger:
        # liger's fused linear cross-entropy: chunks of every position, the input's gradient
        # kept, each chunk's matmuls casting the head weight under autocast
        positions = batch.positions
        chunk = _liger_chunk(positions, v, h)
        a = settings.activation_bytes
        size = chunk * v * a + positions * h * hb * 2 + head_copy
        return size, (
            f"liger fused linear cross-entropy: {chunk} x {v:,} logits chunks over "
            f"{positions} positions"
        )
    if uses_chunked_loss(shape, settings):
        chunk = min(chunk_tokens_for(v, device_kind), max(batch.trained, 1))
        # the chunk's logits (then its gradient) in the projection's dtype and in fp32
        logits = chunk * v * 4 + (chunk * v * pb if pb != 4 else 0)
        hidden = 2 * batch.trained * h * hb  # trained positions' hidden states and gradient
        head_copy *= 2
        head_grad = 0
        if head_trains(shape, settings):
            # the fp32 gradient, and in 16-bit projections one buffer for each chunk's term
            # (an fp32 projection adds its term in place)
            head_grad = v * h * (4 + (pb if pb != 4 else 0))
        size = logits + hidden + head_grad + head_copy
        what = f"chunked: one {chunk} x {v:,} fp32 logits chunk, {batch.trained} trained positions"
        if head_grad:
            what += ", the output head's gradient"
        if head_copy:
            what += ", two 16-bit copies of the head (the model's and the loss's)"
        return size, what
    positions = batch.positions
    a = settings.activation_bytes
    size = 3 * positions * v * 4 + (positions * v * a if a != 4 else 0) + head_copy
    return size, f"full logits: {positions} positions x {v:,} (fp32 logits, log-softmax, gradient)"


def _liger_chunk(positions: int, vocab: int, hidden: int) -> int:
    """liger-kernel's chunk: next power of two of positions / ceil(vocab / hidden)."""
    inc = max(1, -(-vocab // hidden))
    n = max(1, -(-positions // inc))
    return 1 << (n - 1).bit_length()


def _heap_gradient_bytes(shape: ModelShape, settings: Settings) -> int:
    """Gradients set to None after each update whose memory glibc keeps for the next step:
    those of tensors under its mmap threshold (a full fine-tuning of Gemma-3-270M: the decoder's
    0.37 GiB, measured as the RSS before each forward pass; the 262k x 640 embedding's is
    returned). Decoder layers whose MLP matrices reach the threshold keep nothing."""
    pb = param_bytes(settings)
    if shape.hidden * shape.intermediate * pb >= GLIBC_MMAP_MAX:
        return 0
    large = shape.vocab * shape.hidden + shape.head_params if head_trains(shape, settings) else 0
    return max(shape.trainable_params - large, 0) * pb


def head_trains(shape: ModelShape, settings: Settings) -> bool:
    """The output head (or the embedding it is tied to) gets a gradient: full fine-tuning."""
    return settings.finetuning_type == "full"
