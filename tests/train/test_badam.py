"""use_badam: full fine-tuning one decoder layer at a time (the badam package's
BlockOptimizer), its weights kept bf16 under bf16, and a resume that continues exactly."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import SHORT_SFT, run_train, write_config
from lmforge.cli import main

pytest.importorskip("badam")

BADAM = {**SHORT_SFT, "finetuning_type": "full", "use_badam": True, "badam_switch_interval": 2}


def changed_layers(before: dict, after: dict) -> set[str]:
    """Which parts moved: `layers.N`, or the name of a tensor outside the layers."""
    moved = set()
    for name, tensor in after.items():
        if not torch.equal(before[name].float(), tensor.float()):
            parts = name.split(".")
            moved.add(f"layers.{parts[parts.index('layers') + 1]}" if "layers" in parts else name)
    return moved


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_one_layer_trains_at_a_time(tmp_path, tiny_model_dir, checkpointing):
    """The package switches after its step (global_step + 1) % interval == 0: the first layer
    gets one step of its two, then each layer two."""
    original = load_file(tiny_model_dir / "model.safetensors")
    settings = {**BADAM, "gradient_checkpointing": checkpointing}
    first = run_train(tmp_path / "a", tiny_model_dir, settings, max_steps=1)
    assert changed_layers(original, load_file(first.output_dir / "model.safetensors")) == {
        "layers.0"
    }
    both = run_train(tmp_path / "b", tiny_model_dir, settings, max_steps=3)
    assert changed_layers(original, load_file(both.output_dir / "model.safetensors")) == {
        "layers.0",
        "layers.1",
    }


def test_weights_stay_bf16_under_bf16(tmp_path, tiny_model_dir, caplog):
    from lmforge import device

    if not device.supports_bf16():
        pytest.skip("bf16 falls back to fp32 on this device")
    with caplog.at_level("INFO", logger="lmforge"):
        run = run_train(tmp_path, tiny_model_dir, BADAM, max_steps=1, bf16=True)
    assert {p.dtype for p in run.model.parameters()} == {torch.bfloat16}
    assert "(BAdam: one layer at a time (ascending), switching every 2 steps)" in caplog.text


def test_a_resumed_run_ends_with_the_same_weights(tmp_path, tiny_model_dir):
    """Stopped in the middle of the second layer's turn (after step 2: steps 2 and 3 train
    layer 1) and resumed: the layer in training, its fp32 copy and AdamW's states come back
    from the checkpoint."""
    settings = dict(max_steps=4, save_steps=1, badam_switch_interval=2)
    whole = run_train(tmp_path / "whole", tiny_model_dir, BADAM, **settings)
    part = tmp_path / "part"
    run_train(part, tiny_model_dir, BADAM, **{**settings, "max_steps": 2})
    resumed = run_train(part, tiny_model_dir, BADAM, **settings, resume_from_checkpoint="auto")
    a = load_file(whole.output_dir / "model.safetensors")
    b = load_file(resumed.output_dir / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"finetuning_type": "lora"}, "use_badam trains the model's own weights a layer at a time"),
        ({"badam_mode": "ratio"}, "badam_mode: ratio (sparse updates of every layer) is not"),
        ({"use_muon": True}, "each choose the optimizer"),
    ],
)
def test_refused_settings(tmp_path, tiny_model_dir, capsys, settings, message):
    path = write_config(tmp_path, tiny_model_dir, {**BADAM, **settings})
    assert main(["train", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_the_estimate_counts_one_layers_gradients_and_states(tmp_path, tiny_model_dir):
    from lmforge.config import load_config
    from lmforge.config.resolve import resolve_for_training
    from lmforge.estimate import estimate_run
    from lmforge.estimate.devices import Device
    from lmforge.estimate.model_shape import model_shape
    from lmforge.model.setup import prepare_model_setup
    from lmforge.train.stages import get_stage

    device = Device("d", "cpu", 2**34, 0.0, 0.0, "")
    states = {}
    for use_badam in (False, True):
        config = load_config(
            write_config(tmp_path / str(use_badam), tiny_model_dir, BADAM, use_badam=use_badam)
        )
        plan = resolve_for_training(config, bf16_supported=True, cuda=False, check_output_dir=False)
        setup = prepare_model_setup(config, training=True)
        rows = get_stage("sft").datasets(config, setup).train
        result, _ = estimate_run(config, plan, setup.resolved.path, rows, device)
        states[use_badam] = result.memory.terms["optimizer states"]
    shape = model_shape(tiny_model_dir, config.method, 16)
    assert states[False] == 8 * shape.trainable_params  # AdamW: two fp32 states a weight
    assert states[True] == 8 * shape.largest_layer_params
