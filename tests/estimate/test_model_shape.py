"""Parameter counts from config.json on the meta device equal those of the instantiated model."""

from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_decoder, build_tiny_model
from lmforge.config.plan import Evaluation, Precision, Resume, RunPlan
from lmforge.config.schema import MethodConfig
from lmforge.estimate.model_shape import model_shape
from lmforge.model.adapters import apply_finetuning

PLAN = RunPlan(lora_alpha=16, precision=Precision(), evaluation=Evaluation(), resume=Resume())


def _folder(tmp_path, kind):
    model = build_tiny_model(120) if kind == "gemma" else build_tiny_decoder(kind, 120)
    model.config.save_pretrained(tmp_path)  # config.json only: no weights are needed
    return tmp_path, model


@pytest.mark.parametrize("kind", ["gemma", "llama", "qwen2"])
@pytest.mark.parametrize(
    "method",
    [
        MethodConfig(finetuning_type="lora", lora_rank=4),
        MethodConfig(finetuning_type="lora", lora_rank=8, lora_target="q_proj,v_proj"),
        MethodConfig(finetuning_type="freeze", freeze_trainable_layers=1),
        MethodConfig(finetuning_type="full"),
    ],
    ids=["lora4", "lora8-qv", "freeze1", "full"],
)
def test_counts_equal_the_instantiated_model(tmp_path, kind, method):
    folder, model = _folder(tmp_path, kind)
    shape = model_shape(folder, method, 16)
    linear = sum(
        m.weight.numel()
        for layer in model.model.layers
        for m in layer.modules()
        if type(m) is torch.nn.Linear
    )
    trained = apply_finetuning(model, method, PLAN, [])
    assert shape.total_params == sum(p.numel() for p in trained.parameters())
    assert shape.trainable_params == sum(p.numel() for p in trained.parameters() if p.requires_grad)
    assert shape.linear_params == linear


def test_shapes_read_from_the_modules(tmp_path):
    folder, _ = _folder(tmp_path, "gemma")
    shape = model_shape(folder, MethodConfig(finetuning_type="lora", lora_rank=4), 8)
    assert (shape.hidden, shape.layers, shape.heads, shape.kv_heads, shape.head_dim) == (
        32,
        2,
        2,
        1,
        16,
    )
    assert shape.norms_per_layer == 4 and shape.qk_norm and shape.gated_mlp
    assert shape.windows == (64, None)
    assert shape.lora_linears_per_layer == 7 and shape.first_trained_layer == 0
    freeze = model_shape(
        folder, MethodConfig(finetuning_type="freeze", freeze_trainable_layers=1), 8
    )
    assert freeze.first_trained_layer == 1 and freeze.trained_layers == 1


def test_folder_without_config_is_a_user_error(tmp_path):
    from lmforge.errors import UserError

    with pytest.raises(UserError, match="config.json"):
        model_shape(tmp_path, MethodConfig(), 16)


@pytest.mark.parametrize("kind, keeps", [("gemma", True), ("llama", False), ("qwen2", False)])
def test_what_lora_inputs_share_and_the_norms_dtype(tmp_path, kind, keeps):
    """q/k/v read one tensor, gate/up another, down the product; the output projection reads
    the attention's output (kept by attention). Gemma's RMSNorm returns its input's dtype with
    an fp32 weight, LLaMA's (and Qwen2's) the product's fp32."""
    folder, model = _folder(tmp_path, kind)
    text = model.config
    h, i = text.hidden_size, text.intermediate_size
    q = text.num_attention_heads * (
        getattr(text, "head_dim", None) or h // text.num_attention_heads
    )
    shape = model_shape(folder, MethodConfig(finetuning_type="lora", lora_rank=4), 16)
    assert shape.lora_shared_input_width == 2 * h + i and shape.lora_reads_attention_output
    assert shape.lora_input_width == 5 * h + q + i  # each linear's own input
    assert shape.norm_keeps_input_dtype == keeps
    qv = model_shape(
        folder, MethodConfig(finetuning_type="lora", lora_rank=4, lora_target="q_proj,v_proj"), 16
    )
    assert qv.lora_shared_input_width == h and not qv.lora_reads_attention_output
    assert qv.lora_input_width == 2 * h
