"""FORCE_TORCHRUN=1 NPROC_PER_NODE=2 re-executes `lmforge train` under torchrun (gloo on the
CPU): two processes with batch 2 each train like one process with batch 4. The value heads of
stage rm and of PPO's critic are part of the module DDP wraps, so both processes end with the
same head (they drifted apart by up to 0.09 in 6 steps when the heads lived outside it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port, write_config, write_rl_datasets
from lmforge.model.load import load_model
from lmforge.train.trainers.value_head import CRITIC_FILE, VALUE_HEAD_FILE

WORKER = Path(__file__).with_name("ddp_worker.py")


def run_cli(tmp_path, tiny_model_dir, name, batch, env_extra):
    path = write_config(
        tmp_path,
        tiny_model_dir,
        name=name,
        output_dir=str(tmp_path / name),
        finetuning_type="full",
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        per_device_train_batch_size=batch,
        max_steps=3,
        logging_steps=1,
        save_steps=100,
        ddp_timeout=120,
    )
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


# ---- value heads in sync across two processes ---------------------------------------------------


TORCHRUN_RL = {
    "records": None,  # write_rl_datasets: `pairs` for stage rm, `prompts` for ppo
    "per_device_train_batch_size": 2,
    "max_steps": 6,
    "logging_steps": 1,
    "save_steps": 3,
    "learning_rate": 1e-2,
    "lr_scheduler_type": "constant",
    "lora_alpha": 32,
    "cutoff_len": 64,
    "max_completion_length": 8,
    "ddp_timeout": 120,
}


def torchrun_worker(folder: Path, tiny_model_dir, **settings) -> list[dict[str, torch.Tensor]]:
    """Train under torchrun with two processes; each process's trainable weights, by rank."""
    write_rl_datasets(folder / "data")
    path = write_config(folder, tiny_model_dir, TORCHRUN_RL, **settings)
    dumps = folder / "ranks"
    dumps.mkdir()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(WORKER),
        str(path),
        str(dumps),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FORCE_TORCHRUN": "0"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [load_file(dumps / f"rank{rank}.safetensors") for rank in (0, 1)]


def assert_same_on_both_ranks(ranks: list[dict[str, torch.Tensor]], head: str) -> None:
    first, second = ranks
    assert any(name.startswith(f"{head}.") for name in first), sorted(first)
    assert any("lora_" in name for name in first), sorted(first)
    drift = {name: (first[name] - second[name]).abs().max().item() for name in first}
    assert all(d == 0 for d in drift.values()), {n: d for n, d in drift.items() if d}


@pytest.fixture(scope="module")
def two_process_rm(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("rm2")
    ranks = torchrun_worker(folder, tiny_model_dir, stage="rm", dataset="pairs")
    return folder / "out", ranks


def test_reward_model_head_is_the_same_on_both_processes(two_process_rm):
    out, ranks = two_process_rm
    assert_same_on_both_ranks(ranks, "value_head")
    saved = load_file(out / VALUE_HEAD_FILE)  # what ppo/grpo load as the reward model
    assert torch.equal(saved["summary.weight"], ranks[0]["value_head.summary.weight"])
    assert (out / "checkpoint-3" / VALUE_HEAD_FILE).is_file()


def test_ppo_critic_is_the_same_on_both_processes(tmp_path, tiny_model_dir, two_process_rm):
    rm_out, _ = two_process_rm
    ranks = torchrun_worker(
        tmp_path, tiny_model_dir, stage="ppo", dataset="prompts", reward_model=str(rm_out)
    )
    assert_same_on_both_ranks(ranks, "value_head")
    critic = ranks[0]["value_head.summary.weight"]
    assert critic.abs().sum() > 0  # zero-initialised, so it trained
    saved = load_file(tmp_path / "out" / CRITIC_FILE)
    assert torch.equal(saved["summary.weight"], critic)
    assert (tmp_path / "out" / "checkpoint-3" / CRITIC_FILE).is_file()
