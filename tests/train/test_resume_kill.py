"""A run killed with SIGKILL mid-training, started again with the same command
(`resume_from_checkpoint: auto`), ends with the same losses, train_loss and weights as a run
never interrupted; a checkpoint whose save never finished is never picked up. A run stopped with
SIGINT (Ctrl-C) saves a checkpoint at the step it stopped, prints the command that resumes, and
resumes as exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import build_tiny_tokenizer, write_config
from lmforge.model.load import load_model
from lmforge.train.checkpoints import list_checkpoints

FULL_TWO_EPOCHS = {
    "finetuning_type": "full",
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 2,
    "num_train_epochs": 2,
    "logging_steps": 1,
    "save_steps": 3,
    "resume_from_checkpoint": "auto",
}
"""TOY_RECORDS: 16 steps (batch 2, two epochs), a checkpoint every 3; run again, `auto` resumes."""


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


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, slower_model_dir):
    """The run never interrupted, to compare with."""
    tmp_path = tmp_path_factory.mktemp("straight")
    output_dir = tmp_path / "straight"
    path = write_config(
        tmp_path, slower_model_dir, FULL_TWO_EPOCHS, name="straight", output_dir=str(output_dir)
    )
    subprocess.run(command(path), env=ENV, check=True, capture_output=True, timeout=600)
    return output_dir


def train_loss(output_dir):
    return json.loads((output_dir / "all_results.json").read_text())["train_loss"]


def assert_same_run(straight, resumed):
    straight_log, resumed_log = log_lines(straight), log_lines(resumed)
    assert [r["current_steps"] for r in resumed_log] == list(range(1, 17))
    for a, b in zip(straight_log, resumed_log):
        assert abs(a["loss"] - b["loss"]) < 1e-6, (a, b)
    # The final train_loss covers the whole run, not only the steps after the resume.
    assert abs(train_loss(straight) - train_loss(resumed)) < 1e-6
    a, b = load_model(straight).state_dict(), load_model(resumed).state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_sigkill_then_same_command_matches_uninterrupted(tmp_path, slower_model_dir, straight):
    tiny_model_dir = slower_model_dir
    env = ENV
    killed = tmp_path / "killed"
    path = write_config(
        tmp_path, tiny_model_dir, FULL_TWO_EPOCHS, name="killed", output_dir=str(killed)
    )
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
    assert list_checkpoints(killed)[0].name in {f"checkpoint-{n}" for n in (3, 6, 9, 12, 15)}

    result = subprocess.run(command(path), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resume from:" in result.stderr
    assert_same_run(straight, killed)


def test_sigint_saves_at_the_step_and_resumes_exactly(tmp_path, slower_model_dir, straight):
    stopped = tmp_path / "stopped"
    path = write_config(
        tmp_path, slower_model_dir, FULL_TWO_EPOCHS, name="stopped", output_dir=str(stopped)
    )
    process = subprocess.Popen(
        command(path), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not log_lines(stopped) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)  # after the first logged step
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert "SIGINT: stopping after this step to save a checkpoint" in stderr
    step = log_lines(stopped)[-1]["current_steps"]
    assert 1 <= step < 16  # stopped mid-run, at a step boundary
    # A checkpoint at the step it stopped (save_steps is 3: not one of the regular saves).
    assert list_checkpoints(stopped)[0].name == f"checkpoint-{step}"
    assert not (stopped / ".staging").exists()
    assert not (stopped / "all_results.json").exists()  # no final save: the run is not over
    assert f"Interrupted: stopped at step {step} of 16 and saved {stopped}/checkpoint-{step}" in (
        " ".join(stderr.split())
    )
    assert f"lmforge train {path} resume_from_checkpoint=auto" in stderr

    result = subprocess.run(
        [*command(path), "resume_from_checkpoint=auto"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resume from: {stopped}/checkpoint-{step}" in result.stderr
    assert_same_run(straight, stopped)


def test_an_unfinished_save_is_never_resumed_from(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    partial = tmp_path / ".staging" / "checkpoint-6"  # a save killed half-way
    partial.mkdir(parents=True)
    assert list_checkpoints(tmp_path)[0] == tmp_path / "checkpoint-3"
