"""ref_model_adapters and ref_model_quantization_bit (LLaMA-Factory's keys): the reference that
DPO (and KTO, PPO, GRPO, ASFT) compares the model with is ref_model with LoRA adapters merged,
or loaded in 4 or 8 bits. The usual use: DPO continues an SFT adapter, and the reference is
that SFT model, not the base."""

import pytest
import torch

from conftest import SHORT_SFT, run_train, write_pairs_dataset
from lmforge.errors import UserError

PAIRS = [
    {"instruction": f"Question {i}?", "input": "", "chosen": "Yes, gladly.", "rejected": "no"}
    for i in range(8)
]
DPO = {
    "records": None,
    "stage": "dpo",
    "dataset": "pairs",
    "per_device_train_batch_size": 4,
    "max_steps": 2,
    "logging_steps": 1,
    "save_steps": 100,
    "learning_rate": 1e-2,
    "lr_scheduler_type": "constant",
}


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory, tiny_model_dir):
    """A LoRA SFT run's output_dir: the model DPO starts from."""
    folder = tmp_path_factory.mktemp("sft")
    return run_train(folder, tiny_model_dir, SHORT_SFT, max_steps=4).output_dir


def _first_margin(run) -> float:
    import json

    state = json.loads((run.output_dir / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h][0]["rewards/margins"]


def test_the_reference_is_the_sft_model_with_ref_model_adapters(
    tmp_path, tiny_model_dir, sft_adapter
):
    data = str(write_pairs_dataset(tmp_path / "data", PAIRS))
    continued = {"adapter_name_or_path": str(sft_adapter), "dataset_dir": data}
    # reference = base + the SFT adapter = where the policy starts: no margin at the first step
    sft_reference = run_train(
        tmp_path / "sft-ref", tiny_model_dir, DPO, **continued,
        ref_model=str(tiny_model_dir), ref_model_adapters=str(sft_adapter),
    )  # fmt: skip
    assert _first_margin(sft_reference) == pytest.approx(0.0, abs=1e-6)
    # LLaMA-Factory's default with LoRA: the base (adapters disabled), which the SFT run left
    base_reference = run_train(tmp_path / "base-ref", tiny_model_dir, DPO, **continued)
    assert abs(_first_margin(base_reference)) > 1e-3


def test_a_4_bit_ref_model_trains(tmp_path, tiny_model_dir, caplog):
    caplog.set_level("INFO")
    data = str(write_pairs_dataset(tmp_path / "data", PAIRS))
    run = run_train(
        tmp_path, tiny_model_dir, DPO, dataset_dir=data,
        ref_model=str(tiny_model_dir), ref_model_quantization_bit=4,
    )  # fmt: skip
    # the 4-bit reference is near the base the policy starts from, not equal to it
    assert 0 < abs(_first_margin(run)) < 0.5
    assert torch.isfinite(torch.tensor(_first_margin(run)))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"ref_model_adapters": "ADAPTER"}, "ref_model_adapters applies to ref_model, which is"),
        ({"ref_model_quantization_bit": 4}, "ref_model_quantization_bit applies to ref_model"),
        ({"ref_model": "MODEL", "ref_model_quantization_bit": 3}, "bit: 3 is not supported"),
        ({"ref_model": "MODEL", "ref_model_adapters": "MISSING"}, "has no adapter_config.json"),
    ],
)
def test_reference_settings_that_cannot_apply_are_refused(
    tmp_path, tiny_model_dir, sft_adapter, settings, message
):
    names = {"MODEL": str(tiny_model_dir), "ADAPTER": str(sft_adapter), "MISSING": str(tmp_path)}
    settings = {k: names.get(v, v) for k, v in settings.items()}
    data = str(write_pairs_dataset(tmp_path / "data", PAIRS))
    with pytest.raises(UserError, match=message):
        run_train(tmp_path, tiny_model_dir, DPO, dataset_dir=data, **settings)
