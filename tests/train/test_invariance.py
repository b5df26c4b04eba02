"""Batch 1 x 8 accumulation steps trains exactly like batch 8: the loss is normalised by the
number of trained tokens across the whole accumulated batch, not averaged per micro-batch."""

import json

import pytest
import torch

from conftest import run_train

# Answers of very different lengths, so per-micro-batch averaging would weigh them differently.
RECORDS = [
    {"instruction": f"Q{i}", "input": "", "output": "A" * (1 + 7 * (i % 4))} for i in range(16)
]


TWO_FULL_STEPS = {
    "records": RECORDS,
    "finetuning_type": "full",
    "learning_rate": 1e-3,
    "lr_scheduler_type": "constant",
    "max_steps": 2,
    "logging_steps": 1,
    "save_steps": 100,
}


def losses(run):
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_accumulation_matches_a_large_batch(tmp_path, tiny_model_dir):
    big, small = (
        run_train(
            tmp_path,
            tiny_model_dir,
            TWO_FULL_STEPS,
            name=name,
            output_dir=str(tmp_path / name),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
        )
        for name, batch, accumulation in [("big", 8, 1), ("small", 1, 8)]
    )
    assert losses(small) == pytest.approx(losses(big), rel=1e-4)
    for (name, a), b in zip(big.model.state_dict().items(), small.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
