"""GRPO on the tiny model: a reward it can learn goes up, the adapter reloads, the reference
(KL) and ppo_epochs paths run, the reward function sees the data's columns; bad settings stop
before any model loads."""

import json
from pathlib import Path

import pytest
import torch

from conftest import run_train, write_config
from lmforge.cli import main
from lmforge.model.load import attach_adapters, load_model
from lmforge.train.losses.rl import group_advantages, grpo_loss, k3_kl

# Rewards that the random tiny model earns sometimes, so the group has something to compare.
REWARDS = """
def lowercase(prompts, completions, **columns):
    return [sum(ch.islower() for ch in c) / max(len(c), 1) for c in completions]

def sees_columns(prompts, completions, completion_ids, answer, topic, **columns):
    # 1 when the columns arrive aligned with the completions (prompt i is "Question i?")
    return [float(p == f"Question {t}?" and a == str(t * 2)) for p, a, t in zip(prompts, answer, topic)]
"""
RECORDS = [
    {"instruction": f"Question {i}?", "input": "", "output": "x", "answer": str(2 * i), "topic": i}
    for i in range(8)
]


GRPO = {
    "records": RECORDS,
    "stage": "grpo",
    "reward_funcs": "rewards:lowercase",
    "num_generations": 4,
    "max_completion_length": 8,
    "cutoff_len": 64,
    "per_device_train_batch_size": 2,
    "max_steps": 12,
    "logging_steps": 1,
    "save_steps": 100,
    "learning_rate": 3e-2,
    "lr_scheduler_type": "constant",
    "lora_alpha": 32,
    "ppo_kl_coef": 0.0,
}
"""Twelve steps of GRPO on RECORDS with the `lowercase` reward (rewards.py, beside train.yaml)."""


def history(run) -> list[dict]:
    state = json.loads((run.output_dir / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h]


def probe_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[2, 4, 93, 91, 77, 90, 103]])).logits


def test_grpo_raises_a_learnable_reward_and_the_adapter_reloads(tmp_path, tiny_model_dir):
    (tmp_path / "rewards.py").write_text(REWARDS)
    run = run_train(tmp_path, tiny_model_dir, GRPO)
    rewards = [h["reward"] for h in history(run)]
    assert len(rewards) == 12
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.3, rewards  # measured: about 0.2 -> 0.95
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["current_steps"] == 12
    assert json.loads(lines[-1])["num_tokens"] > 0
    assert (run.output_dir / "adapter_model.safetensors").is_file()
    reloaded = attach_adapters(load_model(tiny_model_dir), [str(run.output_dir)], merge=True)
    assert torch.allclose(probe_logits(reloaded), probe_logits(run.model.eval()), atol=1e-5)
    assert not torch.allclose(probe_logits(load_model(tiny_model_dir)), probe_logits(reloaded))


def test_grpo_with_kl_epochs_builtins_and_columns(tmp_path, tiny_model_dir):
    (tmp_path / "rewards.py").write_text(REWARDS)
    run = run_train(
        tmp_path,
        tiny_model_dir,
        GRPO,
        reward_funcs="rewards:sees_columns, rewards:lowercase, numeric_match*0.5, exact_match",
        ppo_kl_coef=0.1,
        ppo_epochs=2,
        max_steps=4,
    )
    logs = history(run)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    fresh = [h for h in logs if "reward" in h]  # a new rollout every second step
    assert [h["step"] for h in fresh] == [1, 3]
    assert all(h["rewards/rewards:sees_columns"] == 1.0 for h in fresh)
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert logs[-1]["kl"] > 0
    assert "clip_ratio" in logs[1]


def test_grpo_resumes_exactly(tmp_path, tiny_model_dir):
    """The checkpoint restores the RNG, so the resumed run samples the same completions."""
    settings = dict(max_steps=6, save_steps=3, ppo_kl_coef=0.1)
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        (folder / "rewards.py").write_text(REWARDS)
    full = run_train(tmp_path / "a", tiny_model_dir, GRPO, **settings)
    first = run_train(tmp_path / "b", tiny_model_dir, GRPO, **settings)
    resumed = run_train(
        tmp_path / "b",
        tiny_model_dir,
        GRPO,
        resume_from_checkpoint=str(first.output_dir / "checkpoint-3"),
        **settings,
    )
    assert [h["loss"] for h in history(resumed)] == pytest.approx(
        [h["loss"] for h in history(full)], abs=1e-6
    )
    assert torch.allclose(probe_logits(full.model.eval()), probe_logits(resumed.model.eval()))


@pytest.mark.parametrize("reward", ["counted:f", "counted.py:f"])
def test_a_reward_file_is_imported_once_per_run(tmp_path, tiny_model_dir, reward):
    """The check before the model loads, the data step and the trainer all need the rewards;
    the user's file runs once (its top-level code counts here, in a file beside it)."""
    (tmp_path / "counted.py").write_text(
        "from pathlib import Path\n"
        "COUNT = Path(__file__).with_name('imports.txt')\n"
        "COUNT.write_text(COUNT.read_text() + 'x' if COUNT.exists() else 'x')\n"
        "def f(prompts, completions, **columns):\n"
        "    return [float(len(c) % 2) for c in completions]\n"
    )
    run = run_train(tmp_path, tiny_model_dir, GRPO, reward_funcs=reward, max_steps=1)
    assert len(history(run)) == 1
    assert (tmp_path / "imports.txt").read_text() == "x"


def test_group_advantages_and_loss_formulas():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    adv = group_advantages(rewards, 2)
    assert adv[:2].tolist() == pytest.approx([0.7071, -0.7071], abs=1e-3)
    assert adv[4:].tolist() == [0.0, 0.0]  # a tie teaches nothing
    logps = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]]))
    assert k3_kl(logps, logps).abs().max() == 0
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, metrics = grpo_loss(
        logps, logps, logps, torch.tensor([1.0, -1.0]), mask, clip=0.2, beta=0.1
    )
    # ratio 1: -(A) per token, averaged over the 3 real tokens: (-1 - 1 + 1) / 3
    assert loss.item() == pytest.approx(-1 / 3)
    assert metrics["kl"] == 0


ONE_GRPO_STEP = {
    "records": RECORDS,
    "stage": "grpo",
    "max_steps": 1,
    "cutoff_len": 64,
    "max_completion_length": 8,
}


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "stage grpo needs rewards"),
        ({"reward_funcs": "no_such_rewards_mod:score"}, "cannot import module"),
        ({"reward_funcs": "exact_mach"}, "did you mean `exact_match`"),
        ({"reward_funcs": "exact_match", "num_generations": 1}, "num_generations: 1"),
        ({"reward_funcs": "exact_match", "max_completion_length": 64}, "cutoff_len (64)"),
        ({"reward_funcs": "exact_match", "val_size": 0.25}, "does not evaluate"),
        ({"reward_model": "no-such-rm"}, "reward_model"),
    ],
)
def test_bad_grpo_settings_stop_before_training(
    tmp_path, tiny_model_dir, capsys, settings, message
):
    path = write_config(tmp_path, tiny_model_dir, ONE_GRPO_STEP, **settings)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Fix: " in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "grpo"


def test_grpo_examples_run_on_the_tiny_model(tmp_path, tiny_model_dir, capsys):
    """examples/grpo: sft.yaml, then grpo.yaml on its adapter (two steps each)."""
    common = [f"model_name_or_path={tiny_model_dir}", "max_steps=2", "save_steps=2"]
    sft = tmp_path / "sft"
    assert main(["train", str(EXAMPLES / "sft.yaml"), f"output_dir={sft}", *common]) == 0
    out = tmp_path / "grpo"
    code = main(
        [
            "train",
            str(EXAMPLES / "grpo.yaml"),
            f"output_dir={out}",
            f"adapter_name_or_path={sft}",
            *common,
        ]
    )
    assert code == 0, capsys.readouterr().err[-2000:]
    assert (out / "checkpoint-2").is_dir() and (out / "adapter_model.safetensors").is_file()
    logs = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in logs] == [1, 2]


def test_rollout_sampler_keeps_the_datasets_order_without_shuffling():
    from lmforge.train.trainers.rollout import RepeatedChunkSampler

    sampler = RepeatedChunkSampler(5, chunk=2, repeats=2, seed=0, shuffle=False)
    assert list(sampler) == [0, 1, 0, 1, 2, 3, 2, 3, 4, 0, 4, 0]
    shuffled = list(RepeatedChunkSampler(5, chunk=2, repeats=1, seed=0))
    assert sorted(shuffled[:5]) == [0, 1, 2, 3, 4] and shuffled[:5] != [0, 1, 2, 3, 4]
