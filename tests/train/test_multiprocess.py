"""FORCE_TORCHRUN=1 NPROC_PER_NODE=2 re-executes `lmforge train` under torchrun (gloo on the
CPU): two processes with batch 2 each train like one process with batch 4."""

import json
import os
import subprocess
import sys

import torch
import yaml

from conftest import TOY_RECORDS, write_alpaca_dataset
from lmforge.model.load import load_model


def run_cli(tmp_path, tiny_model_dir, name, batch, env_extra):
    data = write_alpaca_dataset(tmp_path / "data", TOY_RECORDS)
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
        "max_steps": 3,
        "logging_steps": 1,
        "save_steps": 100,
        "ddp_timeout": 120,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **env_extra, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "train", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / name, result.stderr


def test_two_processes_match_one_with_twice_the_batch(tmp_path, tiny_model_dir):
    single, _ = run_cli(tmp_path, tiny_model_dir, "single", 4, {"FORCE_TORCHRUN": "0"})
    double, log = run_cli(
        tmp_path, tiny_model_dir, "double", 2, {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}
    )
    assert "torch.distributed.run" in log
    assert log.count("Plan") == 1  # only rank 0 speaks
    a, b = load_model(single).state_dict(), load_model(double).state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-4), name
    steps = [
        json.loads(x)["current_steps"]
        for x in (double / "trainer_log.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]
