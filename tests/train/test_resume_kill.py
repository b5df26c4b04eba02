"""A run killed with SIGKILL mid-training, started again with the same command
(`resume_from_checkpoint: auto`), ends with the same losses and weights as a run never
interrupted; a checkpoint whose save never finished is never picked up."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import TOY_RECORDS, build_tiny_tokenizer, write_alpaca_dataset
from lmforge.config.resolve import latest_checkpoint
from lmforge.model.load import load_model


def write_config(tmp_path, tiny_model_dir, name):
    data = write_alpaca_dataset(tmp_path / "data", TOY_RECORDS)
    config = {
        "model_name_or_path": str(tiny_model_dir),
        "template": "gemma",
        "dataset": "toy",
        "dataset_dir": str(data),
        "output_dir": str(tmp_path / name),
        "finetuning_type": "full",
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 2,
        "num_train_epochs": 2,
        "logging_steps": 1,
        "save_steps": 3,
        "resume_from_checkpoint": "auto",
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, tmp_path / name


def command(path):
    return [sys.executable, "-m", "lmforge", "train", str(path)]


def log_lines(output_dir):
    log = output_dir / "trainer_log.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def slower_model_dir(tmp_path_factory):
    """Wider than the shared tiny model, so a step takes long enough (~0.1 s) for the kill to
    land mid-epoch (16 samples / batch 2 = 8 steps an epoch)."""
    import torch as _torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = build_tiny_tokenizer()
    _torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"] * 2,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    path = tmp_path_factory.mktemp("slower-gemma")
    Gemma3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_sigkill_then_same_command_matches_uninterrupted(tmp_path, slower_model_dir):
    tiny_model_dir = slower_model_dir
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    path, straight = write_config(tmp_path, tiny_model_dir, "straight")
    subprocess.run(command(path), env=env, check=True, capture_output=True, timeout=600)

    path, killed = write_config(tmp_path, tiny_model_dir, "killed")
    process = subprocess.Popen(
        command(path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        steps = [r["current_steps"] for r in log_lines(killed)]
        if steps and steps[-1] >= 4:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "all_results.json").exists()  # it really died before the end
    # Wherever the kill landed (mid-epoch, or even during a save), resume starts from a
    # complete checkpoint: save_steps is 3, the run has 16 steps.
    assert latest_checkpoint(killed).name in {f"checkpoint-{n}" for n in (3, 6, 9, 12, 15)}

    result = subprocess.run(command(path), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resume from:" in result.stderr
    straight_log, resumed_log = log_lines(straight), log_lines(killed)
    assert [r["current_steps"] for r in resumed_log] == list(range(1, 17))
    for a, b in zip(straight_log, resumed_log):
        assert abs(a["loss"] - b["loss"]) < 1e-6, (a, b)
    a, b = load_model(straight).state_dict(), load_model(killed).state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_an_unfinished_save_is_never_resumed_from(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    partial = tmp_path / ".staging" / "checkpoint-6"  # a save killed half-way
    partial.mkdir(parents=True)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-3"
