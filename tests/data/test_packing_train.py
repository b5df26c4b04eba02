"""Training with packing: it runs, the plan states the packing efficiency, and one step over
the whole data packed gives the same loss and weights as the same step unpacked."""

import json
import logging

import pytest
import torch

from conftest import run_train

RECORDS = [
    {"instruction": f"Q{i}", "input": "", "output": "A" * (1 + 5 * (i % 4))} for i in range(12)
]


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))


ONE_FULL_STEP = {
    "records": RECORDS,
    "finetuning_type": "full",
    "learning_rate": 1e-3,
    "lr_scheduler_type": "constant",
    "per_device_train_batch_size": 12,
    "max_steps": 1,
    "logging_steps": 1,
    "save_steps": 100,
    "cutoff_len": 128,
}
"""One step of full tuning over all of RECORDS (batch 12)."""


def first_loss(run) -> float:
    return json.loads((run.output_dir / "trainer_log.jsonl").read_text().splitlines()[0])["loss"]


def test_packed_step_equals_unpacked_step(tmp_path, tiny_model_dir, caplog):
    plain = run_train(
        tmp_path, tiny_model_dir, ONE_FULL_STEP, name="plain", output_dir=str(tmp_path / "plain")
    )
    with caplog.at_level(logging.INFO, logger="lmforge"):
        packed = run_train(
            tmp_path,
            tiny_model_dir,
            ONE_FULL_STEP,
            name="packed",
            output_dir=str(tmp_path / "packed"),
            packing=True,
        )
    assert "packing: 12 samples in 3 rows of 128 tokens, efficiency" in caplog.text
    assert first_loss(packed) == pytest.approx(first_loss(plain), abs=1e-5)
    for (name, a), b in zip(plain.model.state_dict().items(), packed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_lora_training_with_packing_learns(tmp_path, tiny_model_dir):
    run = run_train(
        tmp_path,
        tiny_model_dir,
        ONE_FULL_STEP,
        name="lora",
        output_dir=str(tmp_path / "lora"),
        packing=True,
        finetuning_type="lora",
        lora_rank=4,
        learning_rate=1e-2,
        per_device_train_batch_size=3,  # every row in every step: losses are comparable
        max_steps=8,
    )
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5, losses
