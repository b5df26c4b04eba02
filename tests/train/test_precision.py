"""bf16 mixed precision: which weights are kept in which dtype, peft's LoRA input casts left to
autocast while training, and every stage training in it (on a device with native bf16)."""

import contextlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import SHORT_SFT, STAGE_RUNS, run_stage, run_train
from lmforge import device
from lmforge.train import run as run_module

pytestmark = pytest.mark.skipif(not device.supports_bf16(), reason="no native bf16 here")


def dtypes_by_role(model) -> dict[bool, set[torch.dtype]]:
    """{trains: dtypes of those parameters}."""
    found: dict[bool, set[torch.dtype]] = {True: set(), False: set()}
    for param in model.parameters():
        found[param.requires_grad].add(param.dtype)
    return found


def losses(run) -> list[float]:
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.parametrize(
    "settings, frozen, precision",
    [
        (
            {"finetuning_type": "lora"},
            {torch.bfloat16},
            "bf16 mixed (frozen weights bf16, trained weights fp32)",
        ),
        (
            {"finetuning_type": "freeze", "freeze_trainable_layers": 1},
            {torch.bfloat16},
            "bf16 mixed (frozen weights bf16, trained weights fp32)",
        ),
        ({"finetuning_type": "full"}, set(), "bf16 mixed"),  # fp32 master weights
    ],
    ids=["lora", "freeze", "full"],
)
def test_frozen_weights_are_bf16_and_trained_ones_fp32(
    tmp_path, tiny_model_dir, settings, frozen, precision
):
    run = run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=2, bf16=True, **settings)
    found = dtypes_by_role(run.model)
    assert found[True] == {torch.float32}
    assert found[False] == frozen
    plan = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
    assert plan["precision"] == precision
    assert all(torch.isfinite(torch.tensor(losses(run))))


def test_lora_inputs_are_left_to_autocast_while_training_with_the_same_losses(
    tmp_path, tiny_model_dir, monkeypatch
):
    """peft's cast of each LoRA input to fp32 is off during training (autocast casts to bf16
    anyway: bf16 -> fp32 -> bf16 is exact), on again afterwards; the losses are identical."""
    seen = []
    original = run_module.lora_inputs_left_to_autocast

    def spy(model, plan):
        context = original(model, plan)

        class Watch:
            def __enter__(self):
                context.__enter__()
                seen.append({m.cast_input_dtype_enabled for m in lora_layers(model)})

            def __exit__(self, *exc):
                return context.__exit__(*exc)

        return Watch()

    off = run_train(tmp_path / "off", tiny_model_dir, SHORT_SFT, max_steps=3, bf16=True)
    monkeypatch.setattr(run_module, "lora_inputs_left_to_autocast", spy)
    watched = run_train(tmp_path / "watched", tiny_model_dir, SHORT_SFT, max_steps=3, bf16=True)
    assert seen == [{False}]
    assert {m.cast_input_dtype_enabled for m in lora_layers(watched.model)} == {True}
    monkeypatch.setattr(
        run_module, "lora_inputs_left_to_autocast", lambda *_: contextlib.nullcontext()
    )
    cast = run_train(tmp_path / "cast", tiny_model_dir, SHORT_SFT, max_steps=3, bf16=True)
    assert losses(off) == losses(cast) == losses(watched)


def lora_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers
    return layers


@pytest.mark.parametrize("stage", list(STAGE_RUNS))
def test_each_stage_trains_lora_in_bf16_mixed_precision(tmp_path, tiny_model_dir, stage):
    """Frozen bf16 weights meet fp32 adapters in every stage's forward passes: the policy's, the
    reference's (adapters disabled), the value head's and sampling (grpo)."""
    run = run_stage(tmp_path, tiny_model_dir, stage)
    assert dtypes_by_role(run.model) == {True: {torch.float32}, False: {torch.bfloat16}}


@pytest.mark.parametrize("finetuning_type", ["freeze", "full"])
def test_reference_copy_runs_in_bf16_mixed_precision(tmp_path, tiny_model_dir, finetuning_type):
    """dpo with freeze (frozen bf16 and trained fp32 layers side by side) and full: the frozen
    reference copy runs under the same autocast as the policy."""
    settings = {"finetuning_type": finetuning_type, "freeze_trainable_layers": 1}
    run_stage(tmp_path, tiny_model_dir, "dpo", **settings)


def test_grpo_with_freeze_samples_in_bf16_mixed_precision(tmp_path, tiny_model_dir):
    """Sampling runs outside the trainer's forward; with frozen bf16 and trained fp32 layers it
    must run under the same autocast."""
    settings = {"finetuning_type": "freeze", "freeze_trainable_layers": 1}
    run_stage(tmp_path, tiny_model_dir, "grpo", **settings)


def test_do_predict_after_freeze_training_in_bf16_mixed_precision(tmp_path, tiny_model_dir):
    """do_predict answers with the model just trained (frozen bf16 and trained fp32 layers side
    by side): its forward keeps accelerate's autocast after training."""
    run = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT_SFT,
        max_steps=2,
        bf16=True,
        finetuning_type="freeze",
        freeze_trainable_layers=1,
        do_predict=True,
        predict_with_generate=True,
        max_new_tokens=4,
    )
    rows = (run.output_dir / "generated_predictions.jsonl").read_text().splitlines()
    assert len(rows) == 8 and json.loads(rows[0])["label"] == "I am Forge, made by lmforge."


@pytest.fixture
def loaded_dtypes(monkeypatch):
    """(folder name, dtypes of its weights) of each model a reference or a reward model loads
    from now on (not the policy: train/run.py holds its own name for load_model)."""
    from lmforge.model import load as load_module
    from lmforge.train.trainers import reference

    seen: list[tuple[str, set[torch.dtype]]] = []
    original = load_module.load_model

    def recording(path, **kwargs):
        model = original(path, **kwargs)
        seen.append((Path(path).name, {p.dtype for p in model.parameters()}))
        return model

    monkeypatch.setattr(load_module, "load_model", recording)
    monkeypatch.setattr(reference, "load_model", recording)
    return seen


@pytest.mark.parametrize("bf16, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_an_explicit_ref_model_loads_in_bf16_under_bf16_mixed_precision(
    tmp_path, tiny_model_dir, loaded_dtypes, bf16, dtype
):
    """As LLaMA-Factory loads it: the reference never trains, autocast computes with bf16
    weights anyway, and it takes half the memory."""
    reference = tmp_path / "reference-model"
    load_model_fp32(tiny_model_dir).save_pretrained(reference)
    run_stage(tmp_path, tiny_model_dir, "dpo", ref_model=str(reference), bf16=bf16)
    assert dict(loaded_dtypes)["reference-model"] == {dtype}


def test_the_ppo_reward_model_loads_in_bf16_under_bf16_mixed_precision(
    tmp_path, tiny_model_dir, loaded_dtypes
):
    rm = run_stage(tmp_path / "rm", tiny_model_dir, "rm", bf16=False)
    loaded_dtypes.clear()
    settings = {"reward_model": str(rm.output_dir), "max_completion_length": 4}
    run = run_stage(tmp_path, tiny_model_dir, "grpo", **settings, reward_funcs=None)
    # the reward model's body: its base (the tiny model), its adapter merged in
    assert loaded_dtypes == [(Path(tiny_model_dir).name, {torch.bfloat16})]
    assert dtypes_by_role(run.model) == {True: {torch.float32}, False: {torch.bfloat16}}


def load_model_fp32(path):
    from lmforge.model.load import load_model

    return load_model(path)
