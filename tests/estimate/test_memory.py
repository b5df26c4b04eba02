"""Each memory term against a hand computation, and the activation formula against the tensors
autograd really keeps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import build_tiny_decoder, build_tiny_model
from lmforge.config.schema import MethodConfig
from lmforge.estimate.batches import Batch, Lengths, largest_batch
from lmforge.estimate.memory import (
    CPU_PROCESS_BYTES,
    CPU_RETENTION,
    CUDA_CONTEXT_BYTES,
    _weight_casts,
    estimate_memory,
)
from lmforge.estimate.model_shape import ModelShape, model_shape
from lmforge.estimate.settings import Settings
from lmforge.train.losses.linear_ce import chunk_tokens_for

SHAPE = ModelShape(
    model_type="toy",
    total_params=1_000_000,
    trainable_params=10_000,
    linear_params=600_000,
    head_params=0,
    largest_layer_params=100_000,
    hidden=64,
    layers=4,
    heads=4,
    kv_heads=2,
    head_dim=16,
    intermediate=128,
    vocab=1000,
    windows=(None, None, None, None),
    norms_per_layer=2,
    qk_norm=False,
    gated_mlp=True,
    lora_linears_per_layer=7,
    lora_rank=8,
    first_trained_layer=0,
    trained_layers=0,
    head_adapted=False,
    final_logit_softcapping=None,
)
SETTINGS = Settings(
    stage="sft",
    finetuning_type="lora",
    lora_rank=8,
    quantization_bit=None,
    pure_bf16=False,
    autocast_16bit=False,
    batch_size=2,
    accumulation=1,
    gradient_checkpointing=False,
    chunked_loss=True,
    lean_mlp=True,
    optim="adamw_torch",
    zero_stage=0,
    offload_optimizer=False,
    offload_param=False,
    world_size=1,
    cutoff_len=512,
    packing=False,
    padding_free=False,
    per_sample_attention=True,
    reference_copy=False,
    reward_model=False,
    generated_tokens=0,
    generations=1,
    epochs=1.0,
    max_steps=-1,
    seed=42,
)
BATCH = Batch(
    rows=2,
    row_len=100,
    real_tokens=200,
    trained=50,
    segments=(100, 100),
    padded=False,
    flattened=False,
)


def test_weights_gradients_optimizer_by_hand():
    est = estimate_memory(SHAPE, SETTINGS, BATCH, device_kind="cpu")
    assert est.terms["weights"] == 990_000 * 4 + 10_000 * 4
    assert est.terms["gradients"] == 10_000 * 4
    assert est.terms["optimizer states"] == 10_000 * 8  # AdamW: two fp32 states
    assert est.terms["optimizer step"] == 10_000 * 4
    assert est.terms["framework"] == CPU_PROCESS_BYTES
    sgd = estimate_memory(SHAPE, replace(SETTINGS, optim="sgd"), BATCH, device_kind="cpu")
    assert sgd.terms["optimizer states"] == 0
    eight = estimate_memory(SHAPE, replace(SETTINGS, optim="adamw_8bit"), BATCH, device_kind="cpu")
    assert eight.terms["optimizer states"] == 10_000 * 2
    mini = estimate_memory(SHAPE, replace(SETTINGS, optim="adam_mini"), BATCH, device_kind="cpu")
    assert mini.terms["optimizer states"] == 10_000 * 4  # Adam-mini: the first moments
    muon = estimate_memory(SHAPE, replace(SETTINGS, optim="muon"), BATCH, device_kind="cpu")
    assert muon.terms["optimizer states"] == 10_000 * 8
    assert "optimizer muon: states counted as AdamW's (two per parameter), more than it keeps" in (
        muon.notes
    )


def test_llamafactorys_optimizer_keys_name_the_optimizer_estimated():
    from lmforge.estimate.settings import optimizer_name

    assert optimizer_name(MethodConfig(use_adam_mini=True), {}) == "adam_mini"
    assert optimizer_name(MethodConfig(use_galore=True), {}) == "galore_adamw"
    assert optimizer_name(MethodConfig(), {"optim": "sgd"}) == "sgd"
    assert optimizer_name(MethodConfig(), {}) == "adamw_torch"


def test_qlora_weights_by_hand():
    """The linear layers quantized; the other frozen weights bf16 under bf16 mixed precision,
    fp32 otherwise (fp16, or none), as model/load.py loads them."""
    s = replace(SETTINGS, quantization_bit=4, autocast_16bit=True, bf16=True, frozen_bf16=True)
    est = estimate_memory(SHAPE, s, BATCH, device_kind="cuda")
    bits = 4 + 8 / 64 + 32 / (64 * 256)
    assert est.terms["weights"] == int(600_000 * bits / 8) + 390_000 * 2 + 10_000 * 4
    single = replace(s, double_quantization=False)  # an fp32 scale per 64 weights
    est = estimate_memory(SHAPE, single, BATCH, device_kind="cuda")
    assert est.terms["weights"] == int(600_000 * 4.5 / 8) + 390_000 * 2 + 10_000 * 4
    fp32 = replace(SETTINGS, quantization_bit=4)
    est = estimate_memory(SHAPE, fp32, BATCH, device_kind="cuda")
    assert est.terms["weights"] == int(600_000 * bits / 8) + 390_000 * 4 + 10_000 * 4


def test_zero_sharding_by_hand():
    full = replace(SHAPE, trainable_params=1_000_000, trained_layers=4)
    s = replace(SETTINGS, finetuning_type="full", world_size=4, zero_stage=3)
    est = estimate_memory(full, s, BATCH, device_kind="cuda")
    assert est.terms["weights"] == 1_000_000 * 4 // 4 + 2 * 100_000 * 4
    assert est.terms["gradients"] == 1_000_000 * 4 // 4
    assert est.terms["optimizer states"] == 1_000_000 * 8 // 4
    z2 = estimate_memory(full, replace(s, zero_stage=2), BATCH, device_kind="cuda")
    assert z2.terms["weights"] == 1_000_000 * 4 and z2.terms["gradients"] == 1_000_000
    off = estimate_memory(
        full, replace(s, offload_optimizer=True, offload_param=True), BATCH, device_kind="cuda"
    )
    assert off.terms["optimizer states"] == 0 and off.terms["weights"] == 2 * 100_000 * 4


def test_activations_by_hand():
    est = estimate_memory(SHAPE, SETTINGS, BATCH, device_kind="cpu")
    h, q, kv, i, r = 64, 64, 32, 128, 8
    per_layer = (2 + 2) * h + 2 * (q + kv) + 3 * i + 7 * r  # lean MLP: 3 x i
    expected = 4 * per_layer * 200 * 4 + 4 * 4 * 4 * 200 + 3 * h * 200 * 4
    assert est.terms["activations"] == expected
    # and the LoRA gradients set to None after each update, from glibc's heap
    assert est.terms["allocator (CPU)"] == int(CPU_RETENTION * expected) + 10_000 * 4
    padded = replace(BATCH, padded=True)
    masked = estimate_memory(SHAPE, SETTINGS, padded, device_kind="cpu")
    # sdpa keeps the mask in the query's dtype per layer, transformers' boolean mask once
    assert masked.terms["activations"] - expected == 4 * 4 * 2 * 100 * 100 + 2 * 100 * 100
    checkpointed = estimate_memory(
        SHAPE, replace(SETTINGS, gradient_checkpointing=True), BATCH, device_kind="cpu"
    )
    assert (
        checkpointed.terms["activations"]
        == 4 * h * 200 * 4 + per_layer * 200 * 4 + 4 * 4 * 200 + 3 * h * 200 * 4
    )


def test_loss_buffers_by_hand():
    est = estimate_memory(SHAPE, SETTINGS, BATCH, device_kind="cpu")
    chunk = min(chunk_tokens_for(1000), 50)
    assert est.terms["loss buffers"] == chunk * 1000 * 4 + 2 * 50 * 64 * 4
    plain = estimate_memory(SHAPE, replace(SETTINGS, chunked_loss=False), BATCH, device_kind="cpu")
    assert plain.terms["loss buffers"] == 3 * 200 * 1000 * 4


GEMMA_LIKE = replace(SHAPE, windows=(16, 16, None, 16), qk_norm=True, norms_per_layer=4)


def test_cuda_varlen_kernels_build_no_masks():
    """Flattened rows on CUDA run a flash varlen kernel (model/varlen_attention.py): no mask,
    however long the samples; on the CPU the per-sample sdpa builds a band mask for each sample
    longer than the sliding window (bool converted to the query's dtype), and none otherwise."""
    flat = Batch(1, 90, 90, 40, (50, 24, 16), padded=False, flattened=True)
    cuda = estimate_memory(GEMMA_LIKE, SETTINGS, flat, device_kind="cuda")
    assert "masks" not in cuda.details["activations"]
    cpu = estimate_memory(GEMMA_LIKE, SETTINGS, flat, device_kind="cpu")
    sliding_layers = 3
    # 50 and 24 > 16 get a band mask; 16 does not (a key is seen fewer than 16 positions back)
    masks = sliding_layers * 4 * (50 * 50 + 24 * 24)
    assert cpu.terms["activations"] - cuda.terms["activations"] == masks
    short = replace(flat, segments=(16, 16, 16), row_len=48, real_tokens=48)
    assert (
        "masks"
        not in estimate_memory(GEMMA_LIKE, SETTINGS, short, device_kind="cpu").details[
            "activations"
        ]
    )


def test_padded_rows_build_masks_on_cuda_too():
    padded = Batch(2, 100, 150, 40, (100, 50), padded=True, flattened=False)
    est = estimate_memory(GEMMA_LIKE, SETTINGS, padded, device_kind="cuda")
    assert "masks" in est.details["activations"]


def test_loss_chunk_follows_the_device():
    """The chunked loss projects chunk_tokens_for(vocab, device) positions at a time: for a
    262k vocabulary 512 on CUDA (512 MiB of fp32 logits), 128 on the CPU (128 MiB)."""
    big = replace(GEMMA_LIKE, vocab=262_144)
    batch = replace(BATCH, trained=4000)
    assert chunk_tokens_for(262_144, "cuda") == 512 and chunk_tokens_for(262_144) == 128
    cuda = estimate_memory(big, SETTINGS, batch, device_kind="cuda")
    cpu = estimate_memory(big, SETTINGS, batch, device_kind="cpu")
    assert "one 512 x 262,144" in cuda.details["loss buffers"]
    assert "one 128 x 262,144" in cpu.details["loss buffers"]
    assert cuda.terms["loss buffers"] - cpu.terms["loss buffers"] == (512 - 128) * 262_144 * 4


def test_mixed_precision_loss_by_hand():
    """Under bf16 autocast the chunked loss projects in bf16 (each chunk's logits in bf16 and
    fp32) from the final hidden states in the model's dtype: over fp32 weights fp32 hidden
    states and two bf16 copies of the head (the model's one-position logits keep one, the loss
    casts its own); over bf16 frozen weights bf16 hidden states and no copy. liger's fused loss
    chunks every position and keeps the input's gradient."""
    s = replace(SETTINGS, autocast_16bit=True, lean_mlp=False)
    est = estimate_memory(SHAPE, s, BATCH, device_kind="cuda")
    chunk = min(chunk_tokens_for(1000, "cuda"), 50)
    logits = chunk * 1000 * (4 + 2)
    assert est.terms["loss buffers"] == logits + 2 * 50 * 64 * 4 + 2 * 1000 * 64 * 2
    frozen = estimate_memory(
        SHAPE, replace(s, bf16=True, frozen_bf16=True), BATCH, device_kind="cuda"
    )
    assert frozen.terms["loss buffers"] == logits + 2 * 50 * 64 * 2
    liger_settings = replace(s, liger=True, chunked_loss=False)
    liger = estimate_memory(SHAPE, liger_settings, BATCH, device_kind="cuda")
    chunk = 1 << (-(-200 // -(-1000 // 64)) - 1).bit_length()  # liger: 200 positions / 16
    assert chunk == 16
    assert liger.terms["loss buffers"] == chunk * 1000 * 2 + 200 * 64 * 4 * 2 + 1000 * 64 * 2


def test_full_fine_tuning_loss_keeps_the_head_gradient_by_hand():
    """The trained head's fp32 gradient, plus, in a 16-bit projection, one buffer for each
    chunk's term before it is added (fp32 adds it in place)."""
    full = replace(SHAPE, trainable_params=1_000_000, trained_layers=4)
    s = replace(SETTINGS, finetuning_type="full")
    chunk = min(chunk_tokens_for(1000), 50)
    fp32 = estimate_memory(full, s, BATCH, device_kind="cpu")
    assert fp32.terms["loss buffers"] == chunk * 1000 * 4 + 2 * 50 * 64 * 4 + 1000 * 64 * 4
    mixed = estimate_memory(
        full, replace(s, autocast_16bit=True, bf16=True), BATCH, device_kind="cpu"
    )
    assert mixed.terms["loss buffers"] == (
        chunk * 1000 * (4 + 2) + 2 * 50 * 64 * 4 + 1000 * 64 * (4 + 2) + 2 * 1000 * 64 * 2
    )


def test_freed_layer_gradients_stay_in_the_cpu_heap_unless_they_are_mapped_apart():
    """Full fine-tuning frees every gradient after the update: glibc keeps the layers' (under
    its 32 MiB mmap threshold) for the next step, not the embedding's; with accumulation the
    gradients live on and count in full anyway."""
    full = replace(SHAPE, trainable_params=1_000_000, trained_layers=4)
    s = replace(SETTINGS, finetuning_type="full")
    est = estimate_memory(full, s, BATCH, device_kind="cpu")
    activations = est.terms["activations"]
    layers = (1_000_000 - 1000 * 64) * 4  # the embedding (vocab x hidden) is returned
    assert est.terms["allocator (CPU)"] == int(CPU_RETENTION * activations) + layers
    wide = replace(full, hidden=4096, intermediate=2048)  # 4096 x 2048 x 4 B = 32 MiB
    wide_est = estimate_memory(wide, s, BATCH, device_kind="cpu")
    assert wide_est.terms["allocator (CPU)"] == int(CPU_RETENTION * wide_est.terms["activations"])
    kept = estimate_memory(full, replace(s, accumulation=2), BATCH, device_kind="cpu")
    assert kept.terms["allocator (CPU)"] == int(CPU_RETENTION * kept.terms["activations"])
    assert kept.terms["gradients"] == 1_000_000 * 4
    assert estimate_memory(full, s, BATCH, device_kind="cuda").terms.get("allocator (CPU)") is None


FROZEN_BF16 = replace(SETTINGS, autocast_16bit=True, bf16=True, frozen_bf16=True)


def test_frozen_bf16_weights_and_casts_by_hand():
    """bf16 mixed precision with LoRA or freeze: frozen weights 2 bytes, trained ones 4, and
    autocast casts (and autograd keeps) only the trained fp32 weights. QLoRA's base is bf16
    apart from its quantized linears; pure_bf16 has no fp32 weights to cast."""
    assert FROZEN_BF16.frozen_weights_bf16 and FROZEN_BF16.weight_bytes == 2
    est = estimate_memory(SHAPE, FROZEN_BF16, BATCH, device_kind="cuda")
    assert est.terms["weights"] == 990_000 * 2 + 10_000 * 4
    assert est.terms["gradients"] == 10_000 * 4 and est.terms["optimizer states"] == 10_000 * 8
    assert _weight_casts(SHAPE, FROZEN_BF16, 4) == 4 * (10_000 // 4) * 2  # the adapters only
    over_fp32 = replace(FROZEN_BF16, frozen_bf16=False)  # fp16, or before frozen_bf16
    assert _weight_casts(SHAPE, over_fp32, 4) == 4 * (600_000 // 4 + 10_000 // 4) * 2
    freeze = replace(SHAPE, trainable_params=320_000, trained_layers=2, first_trained_layer=2)
    freeze_settings = replace(FROZEN_BF16, finetuning_type="freeze")
    assert _weight_casts(freeze, freeze_settings, 2) == 2 * (600_000 // 4) * 2
    frozen_est = estimate_memory(freeze, freeze_settings, BATCH, device_kind="cuda")
    assert frozen_est.terms["weights"] == 680_000 * 2 + 320_000 * 4
    qlora = replace(FROZEN_BF16, quantization_bit=4)  # the base's other weights bf16 too
    assert qlora.frozen_weights_bf16 and not qlora.mixed_precision
    pure = replace(FROZEN_BF16, pure_bf16=True)
    assert not pure.frozen_weights_bf16 and pure.weight_bytes == 2
    assert _weight_casts(SHAPE, pure, 4) == 0


def test_frozen_bf16_reference_copy_keeps_the_dtypes():
    """dpo with freeze: the reference is a deep copy, frozen weights bf16 and trained fp32."""
    freeze = replace(SHAPE, trainable_params=320_000, trained_layers=2, first_trained_layer=2)
    s = replace(FROZEN_BF16, finetuning_type="freeze", stage="dpo", reference_copy=True)
    est = estimate_memory(freeze, s, BATCH, device_kind="cuda")
    assert est.terms["reference model"] == 680_000 * 2 + 320_000 * 4


def test_loaded_reference_and_reward_models_take_bf16_under_bf16():
    """An explicit ref_model and the reward model never train: bf16 under bf16 mixed precision
    (Precision.frozen_model_dtype), fp32 otherwise; each taken as the policy's size."""
    dpo = replace(FROZEN_BF16, stage="dpo", reference_loaded=True)
    assert estimate_memory(SHAPE, dpo, BATCH, device_kind="cuda").terms["reference model"] == (
        1_000_000 * 2
    )
    ppo = replace(dpo, stage="ppo", reward_model=True)
    est = estimate_memory(SHAPE, ppo, BATCH, device_kind="cuda")
    assert est.terms["reference model"] == 2 * 1_000_000 * 2
    assert est.details["reference model"] == (
        "ref_model and reward model in bf16 (taken as the same size as the policy)"
    )
    fp32 = replace(ppo, bf16=False, autocast_16bit=False, frozen_bf16=False)
    assert estimate_memory(SHAPE, fp32, BATCH, device_kind="cpu").terms["reference model"] == (
        2 * 1_000_000 * 4
    )


def test_loading_a_checkpoint_in_another_dtype_is_a_phase_of_its_own_on_the_cpu():
    """An fp32 checkpoint loaded in bf16 (or quantized) is read through its memory map: its
    pages count next to the converted weights until loading ends, before anything trains.
    The run's peak is the larger of that and training's; loaded in its own dtype, the file's
    pages are the weights (no phase), and on a GPU they are host memory (not counted)."""
    fp32_file = replace(SHAPE, checkpoint_param_bytes=4)
    est = estimate_memory(fp32_file, FROZEN_BF16, BATCH, device_kind="cpu")
    t = est.terms
    assert est.loading == t["framework"] + t["weights"] + 1_000_000 * 4
    assert est.total == max(est.training, est.loading)
    big_file = replace(fp32_file, checkpoint_param_bytes=4, total_params=10**9)
    est = estimate_memory(big_file, FROZEN_BF16, BATCH, device_kind="cpu")
    assert est.loading > est.training and est.total == est.loading

    def loading(shape, settings, kind="cpu"):
        return estimate_memory(shape, settings, BATCH, device_kind=kind).loading

    assert loading(fp32_file, SETTINGS) == 0  # fp32 loaded as fp32
    assert loading(replace(SHAPE, checkpoint_param_bytes=2), FROZEN_BF16) == 0  # bf16 as bf16
    assert loading(SHAPE, FROZEN_BF16) == 0  # the config names no dtype
    assert loading(fp32_file, FROZEN_BF16, "cuda") == 0
    assert loading(replace(SHAPE, checkpoint_param_bytes=2), replace(SETTINGS, quantization_bit=4))


def test_total_counts_the_largest_phase_once():
    """Gradients exist from the backward pass on (the Trainer sets them to None after each
    step): they count with the optimizer step, not on top of the activations, unless gradient
    accumulation (or ZeRO) keeps them across micro-batches."""
    full = replace(SHAPE, trainable_params=1_000_000, trained_layers=4)
    s = replace(SETTINGS, finetuning_type="full")
    est = estimate_memory(full, s, BATCH, device_kind="cuda")
    t = est.terms
    fixed = t["weights"] + t["optimizer states"] + t["framework"]
    assert est.total == fixed + max(
        t["activations"] + t["loss buffers"], t["gradients"] + t["optimizer step"]
    )
    assert t["framework"] >= CUDA_CONTEXT_BYTES
    accumulated = estimate_memory(full, replace(s, accumulation=2), BATCH, device_kind="cuda")
    t = accumulated.terms
    fixed = t["weights"] + t["gradients"] + t["optimizer states"] + t["framework"]
    assert accumulated.total == fixed + max(
        t["activations"] + t["loss buffers"], t["optimizer step"]
    )


def test_largest_batch_layouts():
    lengths = Lengths(torch.tensor([10, 50, 30, 20]).numpy(), torch.tensor([5, 25, 15, 10]).numpy())
    common = dict(packing=False, per_sample_attention=True, cutoff_len=64)
    padded = largest_batch(lengths, 2, padding_free=False, **common)
    assert (padded.rows, padded.row_len, padded.real_tokens, padded.trained) == (2, 50, 80, 40)
    flat = largest_batch(lengths, 2, padding_free=True, **common)
    assert (flat.rows, flat.row_len, flat.segments) == (1, 80, (50, 30))
    packed = largest_batch(lengths, 1, padding_free=False, **{**common, "packing": True})
    assert packed.row_len <= 64 and packed.flattened


def _saved_bytes_per_token(model, length: int, rows: int = 2) -> float:
    """Bytes autograd keeps for the backward pass of one forward, per token (weights excluded)."""
    return _saved_bytes(model, length, rows) / (rows * length)


@pytest.mark.parametrize("kind", ["llama", "gemma"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_activation_formula_matches_saved_tensors(tmp_path, kind, method):
    """The per-layer formula against what autograd keeps, on 3-layer vs 1-layer models (the
    difference is two layers' worth), wide enough for the layer terms to dominate."""
    from peft import LoraConfig, get_peft_model

    from lmforge.model.gated_mlp import use_lean_gated_mlps

    wide = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, head_dim=32)

    def build(layers):
        if kind == "gemma":
            model = build_tiny_model(120)
            config = replace_config(model.config, num_hidden_layers=layers, **wide)
            config.layer_types = ["full_attention"] * layers
            config.sliding_window = 4096
        else:
            config = replace_config(
                build_tiny_decoder("llama", 120).config, num_hidden_layers=layers, **wide
            )
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        if method == "lora":
            model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
        use_lean_gated_mlps(model)
        return model.train(), config

    three, config = build(3)
    one, _ = build(1)
    measured = (_saved_bytes_per_token(three, 64) - _saved_bytes_per_token(one, 64)) / 2
    config.save_pretrained(tmp_path)
    shape = model_shape(tmp_path, MethodConfig(finetuning_type=method, lora_rank=8), 16)
    settings = replace(SETTINGS, finetuning_type=method)
    batch = Batch(1, 1000, 1000, 0, (1000,), False, False)
    one_layer = replace(shape, layers=1, windows=(None,))
    two = estimate_memory(
        replace(shape, layers=2, windows=(None, None)), settings, batch, device_kind="cuda"
    )
    single = estimate_memory(one_layer, settings, batch, device_kind="cuda")
    predicted = (two.terms["activations"] - single.terms["activations"]) / 1000
    assert predicted == pytest.approx(measured, rel=0.03)


def _saved_bytes(model, length: int, rows: int = 2, autocast: bool = False) -> int:
    """Bytes autograd keeps for the backward pass of one forward (weights excluded; their bf16
    copies under autocast included)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    params = {StorageWeakRef(p.untyped_storage()).cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        key = StorageWeakRef(t.untyped_storage()).cdata
        if key not in params:
            seen[key] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(5, 100, (rows, length))
    with (
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
    return sum(seen.values())


@pytest.mark.parametrize("kind", ["llama", "gemma"])
@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("mlp", ["plain", "lean"])
def test_mixed_precision_formula_matches_saved_tensors(tmp_path, kind, method, mlp):
    """bf16 autocast over fp32 weights (the GPU default), on CPU autocast: fp32 norm inputs,
    a bf16 input copy per linear layer that needs one, bf16 attention, and a bf16 copy of every
    linear weight, against what autograd keeps (two layers' worth: 3-layer minus 1-layer)."""
    from peft import LoraConfig, get_peft_model

    from lmforge.model.gated_mlp import use_lean_gated_mlps

    def build(layers):
        model = _wide_model(kind, layers)
        if method == "lora":
            model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
        if mlp == "lean":
            use_lean_gated_mlps(model)
        return model.train(), model.config

    length, rows = 96, 2
    three, config = build(3)
    one, _ = build(1)
    measured = (_saved_bytes(three, length, rows, True) - _saved_bytes(one, length, rows, True)) / 2
    config.save_pretrained(tmp_path)
    shape = model_shape(tmp_path, MethodConfig(finetuning_type=method, lora_rank=8), 16)
    settings = replace(
        SETTINGS, finetuning_type=method, autocast_16bit=True, lean_mlp=mlp == "lean"
    )
    predicted = _one_more_layer_of_activations(shape, settings, rows, length)
    assert predicted == pytest.approx(measured, rel=0.03)


def _one_more_layer_of_activations(shape, settings, rows: int, length: int) -> int:
    """What the estimate's activations grow by from a 1-layer to a 2-layer version of `shape`
    (each layer with its share of the linear and trainable weights; every layer trains where
    all of the shape's do), for rows x length positions: set against the measured (3-layer
    minus 1-layer) / 2."""
    batch = Batch(rows, length, rows * length, 0, (length,) * rows, False, False)
    layer, trains = shape.linear_params // shape.layers, shape.trainable_params // shape.layers

    def activations(n):
        s = replace(
            shape,
            layers=n,
            windows=(None,) * n,
            linear_params=layer * n,
            trainable_params=trains * n,
            trained_layers=min(shape.trained_layers, n),
        )
        return estimate_memory(s, settings, batch, device_kind="cuda").terms["activations"]

    return activations(2) - activations(1)


def _as_training_builds_it(model, method: MethodConfig, precision):
    """The model as train/run.py makes it: loaded in `training_dtype` (bf16 under frozen_bf16),
    `apply_finetuning` turning the trained parameters fp32."""
    from types import SimpleNamespace

    from lmforge.config.plan import Evaluation, Resume, RunPlan
    from lmforge.model.adapters import apply_finetuning
    from lmforge.train.run import training_dtype

    plan = RunPlan(lora_alpha=16, precision=precision, evaluation=Evaluation(), resume=Resume())
    model = model.to(training_dtype(SimpleNamespace(method=method), plan))
    return apply_finetuning(model, method, plan, [])


@pytest.mark.parametrize("kind", ["llama", "gemma"])
@pytest.mark.parametrize("method", ["lora", "freeze"])
@pytest.mark.parametrize("mlp", ["plain", "lean"])
def test_frozen_bf16_formula_matches_saved_tensors(tmp_path, kind, method, mlp):
    """bf16 mixed precision with LoRA or freeze (Precision.frozen_bf16): the model loaded in
    bf16, the trained parameters fp32, peft's LoRA input casts off and bf16 autocast, as
    training runs it. bf16 residual stream, fp32 norm input copies, linear inputs shared (LLaMA's
    RMSNorm with an fp32 weight returns fp32, which each trained linear casts), and bf16 copies
    of the trained weights only, against what autograd keeps (3-layer minus 1-layer)."""
    from peft.helpers import disable_input_dtype_casting

    from lmforge.config.plan import Precision
    from lmforge.model.gated_mlp import use_lean_gated_mlps

    precision = Precision(bf16=True, frozen_bf16=True)

    def build(layers):
        model = _wide_model(kind, layers)
        # freeze: every layer trains (the embeddings and the head stay frozen, in bf16)
        settings = MethodConfig(finetuning_type=method, lora_rank=8, freeze_trainable_layers=layers)
        model = _as_training_builds_it(model, settings, precision)
        if mlp == "lean":
            use_lean_gated_mlps(model)
        return model.train(), model.config, settings

    def saved(model):
        if method != "lora":
            return _saved_bytes(model, length, rows, autocast=True)
        with disable_input_dtype_casting(model, active=True):  # as train/run.py does
            return _saved_bytes(model, length, rows, autocast=True)

    length, rows = 96, 2
    three, config, method_config = build(3)
    one, _, _ = build(1)
    assert {p.dtype for p in three.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in three.parameters() if not p.requires_grad} == {torch.bfloat16}
    measured = (saved(three) - saved(one)) / 2
    config.save_pretrained(tmp_path)
    shape = model_shape(tmp_path, method_config, 16)
    settings = replace(
        SETTINGS,
        finetuning_type=method,
        autocast_16bit=True,
        bf16=True,
        frozen_bf16=True,
        lean_mlp=mlp == "lean",
    )
    assert settings.frozen_weights_bf16 and settings.weight_bytes == 2
    assert shape.trained_layers == (3 if method == "freeze" else 0)  # every layer, or none
    predicted = _one_more_layer_of_activations(shape, settings, rows, length)
    assert predicted == pytest.approx(measured, rel=0.01)


def replace_config(config, **changes):
    config = type(config).from_dict(config.to_dict())
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_tiny_gemma_on_cuda_has_no_masks_and_512_position_chunks(tmp_path):
    """End to end from a Gemma 3 config.json (sliding window 64, a 262k vocabulary): padding-free
    rows with samples past the window build masks on the CPU only, and the loss chunk is the
    device's."""
    import numpy as np

    from lmforge.estimate.core import compute
    from lmforge.estimate.devices import Device, card_device

    config = build_tiny_model(120).config
    config.vocab_size = 262_144
    config.save_pretrained(tmp_path)
    shape_for = lambda s: model_shape(tmp_path, MethodConfig(finetuning_type="lora"), 16)  # noqa: E731
    lengths = Lengths(np.array([600, 500, 40, 30]), np.array([400, 300, 20, 10]))
    settings = replace(
        SETTINGS, padding_free=True, batch_size=2, autocast_16bit=True, cutoff_len=1024
    )
    cpu = Device("CPU", "cpu", 64 * 2**30, 1e11, 0.5, "test")
    on_cuda = compute(shape_for, replace(settings, lean_mlp=False), lengths, card_device("H100"))
    on_cpu = compute(shape_for, settings, lengths, cpu)
    assert on_cuda.batch.segments == (600, 500) and on_cuda.batch.flattened
    assert "masks" not in on_cuda.memory.details["activations"]
    assert "masks" in on_cpu.memory.details["activations"]
    assert "one 512 x 262,144" in on_cuda.memory.details["loss buffers"]
    assert "one 128 x 262,144" in on_cpu.memory.details["loss buffers"]


def _wide_model(kind: str, layers: int):
    """A Gemma- or Llama-shaped model wide enough for the saved-tensor counts (fp32, sdpa)."""
    from transformers import AutoModelForCausalLM

    wide = dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, head_dim=32)
    if kind == "gemma":
        config = replace_config(build_tiny_model(120).config, num_hidden_layers=layers, **wide)
        config.layer_types = ["full_attention"] * layers
        config.sliding_window = 4096
    else:
        base = build_tiny_decoder("llama", 120).config
        config = replace_config(base, num_hidden_layers=layers, num_key_value_heads=2, **wide)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
