"""Batch 1 x 8 accumulation steps trains exactly like batch 8: the loss is normalised by the
number of trained tokens across the whole accumulated batch, not averaged per micro-batch."""

import json

import pytest
import torch
import yaml

from conftest import write_alpaca_dataset
from lmforge.config import load_config
from lmforge.train.run import run_training

# Answers of very different lengths, so per-micro-batch averaging would weigh them differently.
RECORDS = [
    {"instruction": f"Q{i}", "input": "", "output": "A" * (1 + 7 * (i % 4))} for i in range(16)
]


def train(tmp_path, tiny_model_dir, name, batch, accumulation):
    data = write_alpaca_dataset(tmp_path / "data", RECORDS)
    config = {
        "model_name_or_path": str(tiny_model_dir),
        "template": "gemma",
        "dataset": "toy",
        "dataset_dir": str(data),
        "output_dir": str(tmp_path / name),
        "finetuning_type": "full",
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": accumulation,
        "max_steps": 2,
        "logging_steps": 1,
        "save_steps": 100,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_training(load_config(path))


def losses(run):
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_accumulation_matches_a_large_batch(tmp_path, tiny_model_dir):
    big = train(tmp_path, tiny_model_dir, "big", batch=8, accumulation=1)
    small = train(tmp_path, tiny_model_dir, "small", batch=1, accumulation=8)
    assert losses(small) == pytest.approx(losses(big), rel=1e-4)
    for (name, a), b in zip(big.model.state_dict().items(), small.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
