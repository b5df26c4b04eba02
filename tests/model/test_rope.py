"""rope_scaling: the factor LLaMA-Factory derives from cutoff_len, applied to the global
layers only, recorded in the run and used again by inference and export."""

import json
import types

import pytest
import torch
import yaml

from conftest import INFERENCE, SHORT_SFT, build_tiny_decoder, run_train, write_config
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import UserError
from lmforge.model.rope import (
    RopeScaling,
    apply_rope_scaling,
    changes_config,
    original_length,
    plan_rope_scaling,
)


def llama_config(**overrides):
    return build_tiny_decoder("llama", 40, max_position_embeddings=64, **overrides).config


def test_training_factor_is_ceil_of_cutoff_over_the_model_length():
    scaling, note = plan_rope_scaling(llama_config(), "linear", factor=None, context_len=150)
    assert scaling == RopeScaling("linear", 3.0, 64)  # ceil(150 / 64)
    assert note == "rope: linear x3 (64 -> 192 positions)"


def test_cutoff_that_fits_is_not_scaled():
    scaling, note = plan_rope_scaling(llama_config(), "dynamic", factor=None, context_len=64)
    assert scaling is None
    assert (
        note == "rope_scaling dynamic: not applied, cutoff_len 64 fits in the model's 64 positions"
    )


def test_inference_takes_the_recorded_factor_else_llamafactorys_two():
    config = llama_config()
    assert plan_rope_scaling(config, "yarn", factor=4.0, context_len=None)[0].factor == 4.0
    assert plan_rope_scaling(config, "yarn", factor=None, context_len=None)[0].factor == 2.0
    assert plan_rope_scaling(config, "yarn", factor=1.0, context_len=None)[0] is None


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("linear", {}),
        ("dynamic", {"original_max_position_embeddings": 64}),
        ("yarn", {"original_max_position_embeddings": 64}),
        (
            "llama3",
            {
                "original_max_position_embeddings": 64,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            },
        ),
    ],
)
def test_apply_writes_transformers_rope_parameters(kind, extra):
    config = llama_config()
    theta = config.rope_parameters["rope_theta"]
    apply_rope_scaling(config, RopeScaling(kind, 2.0, 64))
    assert config.rope_parameters == {
        "rope_theta": theta,
        "rope_type": kind,
        "factor": 2.0,
        **extra,
    }
    assert config.max_position_embeddings == 128


def test_only_gemma3s_global_layers_are_scaled(tiny_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    sliding = dict(config.rope_parameters["sliding_attention"])
    apply_rope_scaling(config, RopeScaling("linear", 4.0, 512))
    assert config.rope_parameters["sliding_attention"] == sliding
    assert config.rope_parameters["full_attention"]["rope_type"] == "linear"
    assert config.rope_parameters["full_attention"]["factor"] == 4.0
    assert config.max_position_embeddings == 2048


def test_a_saved_scaled_config_is_not_scaled_twice():
    config = llama_config()
    scaling = RopeScaling("linear", 2.0, 64)
    apply_rope_scaling(config, scaling)
    assert original_length(config) == 64  # 128 positions / factor 2
    assert not changes_config(config, scaling)
    assert changes_config(llama_config(), scaling)
    # a longer cutoff on the scaled model is measured from the pre-trained length
    longer, _ = plan_rope_scaling(config, "linear", factor=None, context_len=200)
    assert longer == RopeScaling("linear", 4.0, 64)


def test_scaling_of_another_kind_is_refused():
    config = llama_config()
    apply_rope_scaling(config, RopeScaling("llama3", 2.0, 64))
    with pytest.raises(UserError) as error:
        plan_rope_scaling(config, "linear", factor=None, context_len=500, where="train.yaml")
    text = str(error.value)
    assert "would replace the model's own `llama3` RoPE scaling" in text
    assert "set rope_scaling: llama3" in text


def test_linear_scaling_reads_position_2p_as_the_model_read_p():
    """What linear scaling means: with factor 2, the angles at position 2p are the unscaled
    model's at p, so the logits are the same."""
    from transformers import LlamaForCausalLM

    plain = build_tiny_decoder("llama", 40, max_position_embeddings=64).eval()
    config = llama_config()
    apply_rope_scaling(config, RopeScaling("linear", 2.0, 64))
    scaled = LlamaForCausalLM(config).eval()
    scaled.load_state_dict(plain.state_dict())
    ids = torch.tensor([[3, 17, 5, 29, 8, 11, 2]])
    positions = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        expected = plain(ids, position_ids=positions).logits
        same = scaled(ids, position_ids=2 * positions).logits
        unlike = scaled(ids, position_ids=positions).logits
    assert torch.allclose(same, expected, atol=1e-5)
    assert not torch.allclose(unlike, expected, atol=1e-3)


def test_lora_run_records_the_factor_and_inference_and_export_use_it(tmp_path, tiny_model_dir):
    """The tiny Gemma 3 has 512 positions: cutoff_len 1024 trains with linear x2; chat loads
    the base with it from the run's record; the merged export's config.json holds it."""
    from lmforge.infer.engine import HFEngine

    run = run_train(
        tmp_path / "train",
        tiny_model_dir,
        SHORT_SFT,
        max_steps=2,
        cutoff_len=1024,
        rope_scaling="linear",
    )
    trained = run.model.get_base_model().config.rope_parameters["full_attention"]
    assert (trained["rope_type"], trained["factor"]) == ("linear", 2.0)
    plan = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
    assert plan["rope_factor"] == 2.0

    infer = write_config(
        tmp_path / "chat", tiny_model_dir, INFERENCE, adapter_name_or_path=str(run.output_dir)
    )
    engine = HFEngine.from_config(load_config(infer))
    rope = engine.model.config.rope_parameters["full_attention"]
    assert (rope["rope_type"], rope["factor"]) == ("linear", 2.0)
    assert engine.model.config.max_position_embeddings == 1024

    export_dir = tmp_path / "merged"
    path = write_config(
        tmp_path / "export",
        tiny_model_dir,
        INFERENCE,
        name="export",
        adapter_name_or_path=str(run.output_dir),
        export_dir=str(export_dir),
    )
    assert main(["export", str(path)]) == 0
    saved = json.loads((export_dir / "config.json").read_text())
    assert saved["rope_parameters"]["full_attention"]["factor"] == 2.0
    assert saved["rope_parameters"]["sliding_attention"]["rope_type"] == "default"
    assert saved["max_position_embeddings"] == 1024


def test_cutoff_that_fits_trains_and_serves_unscaled(tmp_path, tiny_model_dir, caplog):
    from lmforge.model.setup import prepare_model_setup, with_training_settings

    with caplog.at_level("INFO", logger="lmforge"):
        run = run_train(
            tmp_path / "train",
            tiny_model_dir,
            SHORT_SFT,
            max_steps=1,
            cutoff_len=256,
            rope_scaling="yarn",
        )
    assert "rope_scaling yarn: not applied, cutoff_len 256 fits in the model's 512" in caplog.text
    plan = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
    assert plan["rope_factor"] == 1.0
    infer = write_config(
        tmp_path / "chat", tiny_model_dir, INFERENCE, adapter_name_or_path=str(run.output_dir)
    )
    config = with_training_settings(load_config(infer))
    assert (config.model.rope_scaling, config.model.rope_factor) == ("yarn", 1.0)
    assert prepare_model_setup(config).rope is None


def test_vllm_refuses_scaling_its_config_does_not_hold(tmp_path, tiny_model_dir):
    from lmforge.infer.vllm_engine import _check_rope_in_config

    config = load_config(write_config(tmp_path, tiny_model_dir, INFERENCE, rope_scaling="linear"))
    setup = types.SimpleNamespace(
        resolved=types.SimpleNamespace(path=tiny_model_dir),
        rope=RopeScaling("linear", 2.0, 512),
    )
    with pytest.raises(UserError, match="write the merged model with `lmforge export`"):
        _check_rope_in_config(config, setup)
    setup.rope = None
    _check_rope_in_config(config, setup)
