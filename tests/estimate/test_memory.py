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


def test_qlora_weights_by_hand():
    s = replace(SETTINGS, quantization_bit=4)
    est = estimate_memory(SHAPE, s, BATCH, device_kind="cuda")
    bits = 4 + 8 / 64 + 32 / (64 * 256)
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
    assert est.terms["allocator (CPU)"] == int(CPU_RETENTION * expected)
    padded = replace(BATCH, padded=True)
    masked = estimate_memory(SHAPE, SETTINGS, padded, device_kind="cpu")
    assert masked.terms["activations"] - expected == 4 * 4 * 2 * 100 * 100  # fp32 mask per layer
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


def test_total_counts_the_largest_phase_once():
    est = estimate_memory(SHAPE, SETTINGS, BATCH, device_kind="cuda")
    t = est.terms
    fixed = t["weights"] + t["gradients"] + t["optimizer states"] + t["framework"]
    assert est.total == fixed + max(t["activations"] + t["loss buffers"], t["optimizer step"])
    assert t["framework"] >= CUDA_CONTEXT_BYTES


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
    from torch.multiprocessing.reductions import StorageWeakRef

    params = {StorageWeakRef(p.untyped_storage()).cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        key = StorageWeakRef(t.untyped_storage()).cdata
        if key not in params:
            seen[key] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(5, 100, (rows, length))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
    return sum(seen.values()) / (rows * length)


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


def replace_config(config, **changes):
    config = type(config).from_dict(config.to_dict())
    for key, value in changes.items():
        setattr(config, key, value)
    return config
