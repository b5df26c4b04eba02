"""One short training run per stage (sft, pt, rm, dpo, kto, ppo, grpo) on the tiny model, with
the paths that touch renamed library APIs switched on (activation checkpointing, checkpoint
saving and rotation, resume, evaluation). .ci/lower-bounds runs these, with the config, chat and
version-shim tests, against the lowest versions pyproject allows (.ci/lower-bounds.txt)."""

import json
from pathlib import Path

import pytest
import torch

from conftest import RL_PROMPTS, run_train, write_alpaca_dataset, write_pairs_dataset
from lmforge.compat import is_activation_checkpointing

LF_DATA = Path(__file__).resolve().parent / "fixtures" / "llamafactory_data"
PAIRS = [
    {"instruction": f"Question {i}?", "input": "", "chosen": "Yes, gladly.", "rejected": "no"}
    for i in range(4)
]
REWARDS = """
def lowercase(prompts, completions, **columns):
    return [sum(ch.islower() for ch in c) / max(len(c), 1) for c in completions]
"""
SHORT = {
    "records": None,  # each stage names its dataset and dataset_dir
    "per_device_train_batch_size": 2,
    "max_steps": 2,
    "logging_steps": 1,
    "save_steps": 1,
    "save_total_limit": 1,
    "learning_rate": 1e-2,
    "lr_scheduler_type": "constant",
    "cutoff_len": 64,
    "max_completion_length": 4,
}


def losses(run) -> list[float]:
    state = json.loads((run.output_dir / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def assert_trained(run, steps: int = 2) -> None:
    logged = losses(run)
    assert len(logged) == steps and all(torch.isfinite(torch.tensor(logged)))
    # save_steps 1, save_total_limit 1: the last checkpoint only (rotation ran), whole.
    assert [p.name for p in run.output_dir.glob("checkpoint-*")] == [f"checkpoint-{steps}"]


def test_sft_with_activation_checkpointing_evaluation_and_resume(tmp_path, tiny_model_dir):
    data = write_alpaca_dataset(tmp_path / "data", [{"instruction": "Hi", "output": "Hello"}] * 8)
    settings = dict(
        stage="sft",
        dataset="toy",
        dataset_dir=str(data),
        gradient_checkpointing=True,
        val_size=2,
        eval_steps=1,
    )
    run = run_train(tmp_path, tiny_model_dir, SHORT, **settings)
    assert_trained(run)
    assert is_activation_checkpointing(run.model)
    resumed = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT,
        **settings,
        max_steps=3,
        resume_from_checkpoint=str(run.output_dir / "checkpoint-2"),
    )
    assert_trained(resumed, steps=3)


def test_pt_full(tmp_path, tiny_model_dir):
    run = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT,
        stage="pt",
        dataset="c4_demo",
        dataset_dir=str(LF_DATA),
        finetuning_type="full",
        learning_rate=1e-3,
    )
    assert_trained(run)


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_preference_stages(tmp_path, tiny_model_dir, stage):
    data = (
        {"dataset": "pairs", "dataset_dir": str(write_pairs_dataset(tmp_path / "data", PAIRS))}
        if stage == "dpo"
        else {"dataset": "kto_en_demo", "dataset_dir": str(LF_DATA)}
    )
    assert_trained(run_train(tmp_path, tiny_model_dir, SHORT, stage=stage, **data))


def test_rm_with_activation_checkpointing_then_ppo(tmp_path, tiny_model_dir):
    """The reward model trains with its value head (the Trainer enables checkpointing through
    ModelWithValueHead under either method name); PPO then scores rollouts with it."""
    data = write_pairs_dataset(tmp_path / "data", PAIRS)
    write_alpaca_dataset(data, RL_PROMPTS[:4], name="prompts")
    rm = run_train(
        tmp_path / "rm",
        tiny_model_dir,
        SHORT,
        stage="rm",
        dataset="pairs",
        dataset_dir=str(data),
        gradient_checkpointing=True,
    )
    assert_trained(rm)
    ppo = run_train(
        tmp_path / "ppo",
        tiny_model_dir,
        SHORT,
        stage="ppo",
        dataset="prompts",
        dataset_dir=str(data),
        reward_model=str(rm.output_dir),
    )
    assert_trained(ppo)


def test_grpo(tmp_path, tiny_model_dir):
    (tmp_path / "rewards.py").write_text(REWARDS)
    data = write_alpaca_dataset(tmp_path / "data", RL_PROMPTS[:4], name="prompts")
    run = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT,
        stage="grpo",
        dataset="prompts",
        dataset_dir=str(data),
        reward_funcs="rewards:lowercase",
        num_generations=2,
    )
    assert_trained(run)
