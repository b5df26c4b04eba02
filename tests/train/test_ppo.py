"""PPO with a reward model trained by stage rm on the tiny model: rollouts scored, the critic
learns, the adapter and critic are saved; GRPO with the same reward model; the formulas; and
ppo without a usable reward model stops before any model loads."""

import json
from pathlib import Path

import pytest
import torch

from conftest import run_train, write_config, write_rl_datasets
from lmforge.cli import main
from lmforge.model.load import attach_adapters, load_model
from lmforge.train.losses.rl import clipped_policy_loss, gae, token_rewards
from lmforge.train.rewards.functions import RewardBatch
from lmforge.train.trainers.ppo import CRITIC_FILE

PPO = {
    "records": None,  # write_rl_datasets: `pairs` for stage rm, `prompts` for ppo and grpo
    "per_device_train_batch_size": 4,
    "logging_steps": 1,
    "save_steps": 100,
    "learning_rate": 1e-2,
    "lr_scheduler_type": "constant",
    "lora_alpha": 32,
    "cutoff_len": 64,
    "max_completion_length": 8,
}


def history(run) -> list[dict]:
    state = json.loads((run.output_dir / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("rm")
    write_rl_datasets(folder / "data")
    run = run_train(folder, tiny_model_dir, PPO, stage="rm", dataset="pairs", max_steps=12)
    assert history(run)[-1]["rewards/accuracies"] == 1.0
    return run.output_dir


def test_ppo_trains_with_the_reward_model_and_saves_adapter_and_critic(
    tmp_path, tiny_model_dir, reward_model
):
    write_rl_datasets(tmp_path / "data")
    run = run_train(
        tmp_path,
        tiny_model_dir,
        PPO,
        stage="ppo",
        dataset="prompts",
        reward_model=str(reward_model),
        max_steps=8,
        ppo_epochs=2,
    )
    logs = history(run)
    assert len(logs) == 8 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    fresh = [h for h in logs if "score" in h]
    assert [h["step"] for h in fresh] == [1, 3, 5, 7]  # each rollout optimised twice
    assert fresh[0]["kl"] == pytest.approx(0.0, abs=1e-5) and fresh[-1]["kl"] > 0
    assert logs[-1]["value_loss"] < logs[0]["value_loss"]  # the critic learns the scores
    assert logs[1]["clip_ratio"] >= 0 and "policy_loss" in logs[1]
    assert (run.output_dir / CRITIC_FILE).is_file()
    reloaded = attach_adapters(load_model(tiny_model_dir), [str(run.output_dir)], merge=True)
    ids = torch.tensor([[2, 4, 93, 91, 77, 90, 103]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, run.model.eval()(ids).logits, atol=1e-5)


@pytest.mark.parametrize(
    "options", [{}, {"ppo_target": 6.0, "ppo_score_norm": True}], ids=["plain", "adaptive"]
)
def test_ppo_resumes_with_its_critic(tmp_path, tiny_model_dir, reward_model, options):
    """The checkpoint holds the critic beside the adapter; resuming restores both (and the
    random state, the adaptive KL coefficient and the scores' running moments), so the resumed
    run repeats the uninterrupted one."""
    settings = dict(
        stage="ppo", dataset="prompts", reward_model=str(reward_model), max_steps=4, save_steps=2,
        **options,
    )  # fmt: skip
    runs = {}
    for name in ("full", "first"):
        write_rl_datasets(tmp_path / name / "data")
        runs[name] = run_train(tmp_path / name, tiny_model_dir, PPO, **settings)
    checkpoint = runs["first"].output_dir / "checkpoint-2"
    assert (checkpoint / CRITIC_FILE).is_file()
    resumed = run_train(
        tmp_path / "first", tiny_model_dir, PPO, resume_from_checkpoint=str(checkpoint), **settings
    )
    assert [h["loss"] for h in history(resumed)] == pytest.approx(
        [h["loss"] for h in history(runs["full"])], abs=1e-6
    )
    critic = runs["full"].model.value_head.summary.weight
    assert torch.allclose(resumed.model.value_head.summary.weight, critic, atol=1e-6)


def test_reward_model_scorer_prefers_what_rm_learnt(reward_model):
    from lmforge.config.schema import DataConfig
    from lmforge.train.rewards.reward_model import RewardModelScorer

    scorer = RewardModelScorer(str(reward_model), DataConfig())
    conversation = {"messages": [{"role": "user", "content": "Q3"}], "system": None, "tools": None}
    batch = RewardBatch(
        ["Q3"] * 2, ["abcdefgh", "ABC123!?"], [[1]] * 2, [None] * 2, {}, [conversation] * 2
    )
    chosen, rejected = scorer.score(batch)
    assert chosen > rejected


def test_grpo_with_the_reward_model(tmp_path, tiny_model_dir, reward_model):
    write_rl_datasets(tmp_path / "data")
    run = run_train(
        tmp_path,
        tiny_model_dir,
        PPO,
        stage="grpo",
        dataset="prompts",
        reward_model=str(reward_model),
        num_generations=4,
        per_device_train_batch_size=1,
        max_steps=2,
    )
    logs = history(run)
    assert all("rewards/reward_model" in h for h in logs)
    assert logs[0]["reward"] == pytest.approx(logs[0]["rewards/reward_model"])


def close(tensor, expected) -> bool:
    return torch.allclose(tensor, torch.as_tensor(expected, dtype=tensor.dtype), atol=1e-6)


def test_gae_and_token_rewards_by_hand():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    logps = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -5.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    rewards, kl = token_rewards(torch.tensor([1.0, 2.0]), logps, ref, mask, kl_coef=0.1)
    assert close(rewards, [[-0.05, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 9.0]])
    adv, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 2: delta_1 = 2 - 1 = 1, A_1 = 1; delta_0 = 0 + 1 - 1 = 0, A_0 = 0 + 0.5 * 1
    assert adv[1].tolist() == pytest.approx([0.5, 1.0, 0.0])
    # row 1: d2 = 1 - .5 = .5; d1 = 0 + .5 - .5 = 0; d0 = -.05 + .5 - .5 = -.05
    assert adv[0].tolist() == pytest.approx([-0.05 + 0.5 * 0.25, 0.25, 0.5])
    assert close(returns, adv + values * mask)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[2.0, 0.5]]))  # ratios 2 and 0.5
    loss, clipped = clipped_policy_loss(new, old, torch.tensor([1.0]), clip=0.2)
    assert close(loss, [[-1.2, -0.5]]) and clipped.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "stage ppo needs a reward model"),
        ({"reward_model": "missing-rm"}, "missing-rm does not exist"),
        ({"reward_model": "."}, "has no value_head.safetensors"),
        (
            {"reward_model": "rm", "ppo_whiten_rewards": True, "per_device_train_batch_size": 1},
            "ppo_whiten_rewards",
        ),
    ],
)
def test_ppo_without_a_usable_reward_model(tmp_path, tiny_model_dir, capsys, settings, message):
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "value_head.safetensors").write_text("")
    (rm / "adapter_config.json").write_text("{}")
    write_rl_datasets(tmp_path / "data")
    path = write_config(tmp_path, tiny_model_dir, PPO, stage="ppo", dataset="prompts", **settings)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Fix: " in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ppo"


def test_ppo_examples_run_on_the_tiny_model(tmp_path, tiny_model_dir, capsys):
    """examples/ppo: rm.yaml, then ppo.yaml with its reward model (two steps each)."""
    common = [f"model_name_or_path={tiny_model_dir}", "max_steps=2", "save_steps=2"]
    rm = tmp_path / "rm"
    assert main(["train", str(EXAMPLES / "rm.yaml"), f"output_dir={rm}", *common]) == 0
    out = tmp_path / "ppo"
    code = main(
        ["train", str(EXAMPLES / "ppo.yaml"), f"output_dir={out}", f"reward_model={rm}", *common]
    )
    assert code == 0, capsys.readouterr().err[-2000:]
    assert (out / "checkpoint-2" / CRITIC_FILE).is_file()
    assert (out / "adapter_model.safetensors").is_file() and (out / CRITIC_FILE).is_file()


def test_the_adaptive_kl_coefficient_and_running_moments_by_hand():
    from lmforge.train.trainers.ppo_control import AdaptiveKL, RunningMoments

    fixed = AdaptiveKL(0.05)
    fixed.update(100.0, 8)
    assert fixed.value == 0.05  # no target: fixed
    kl = AdaptiveKL(0.05, target=6.0)
    kl.update(9.0, 8)  # error 9 / 6 - 1 = 0.5, clipped to 0.2: x (1 + 0.2 * 8 / 10000)
    assert kl.value == pytest.approx(0.05 * 1.00016, rel=1e-12)
    kl.update(5.4, 4)  # error -0.1: x (1 - 0.1 * 4 / 10000)
    assert kl.value == pytest.approx(0.05 * 1.00016 * 0.99996, rel=1e-12)
    moments = RunningMoments()
    moments.update([1.0, 2.0, 3.0])
    assert (moments.mean, moments.std) == pytest.approx((2.0, 1.0))
    moments.update([10.0])
    values = [1.0, 2.0, 3.0, 10.0]
    assert moments.mean == pytest.approx(4.0)
    assert moments.std == pytest.approx(float(torch.tensor(values).std()))  # unbiased


def test_ppo_target_adapts_the_kl_coefficient(tmp_path, tiny_model_dir, reward_model):
    write_rl_datasets(tmp_path / "data")
    run = run_train(
        tmp_path, tiny_model_dir, PPO, stage="ppo", dataset="prompts",
        reward_model=str(reward_model), max_steps=3, ppo_target=6.0, ppo_score_norm=True,
    )  # fmt: skip
    logs = history(run)
    coefficients = [h["kl_coef"] for h in logs]
    # the first batch starts at ppo_kl_coef with the policy at its reference (KL 0 < 6):
    # error clipped to -0.2, 4 completions: x (1 - 0.2 * 4 / 10000)
    assert coefficients[0] == pytest.approx(0.05, rel=1e-6)
    assert coefficients[1] == pytest.approx(0.05 * (1 - 0.2 * 4 / 10_000), rel=1e-6)
    assert coefficients[2] < coefficients[1]


def test_ppo_options_are_refused_for_grpo(tmp_path, tiny_model_dir):
    from lmforge.errors import UserError

    write_rl_datasets(tmp_path / "data")
    (tmp_path / "rewards.py").write_text(
        "def one(completions, **kw):\n    return [1.0] * len(completions)\n"
    )
    with pytest.raises(UserError, match="ppo_target is PPO's: GRPO normalises"):
        run_train(
            tmp_path, tiny_model_dir, PPO, stage="grpo", dataset="prompts",
            reward_funcs="exact_match", ppo_target=6.0, num_generations=2,
        )  # fmt: skip


def test_a_4_bit_reward_model_scores_near_the_full_one(tmp_path, tiny_model_dir, reward_model):
    from lmforge.config.schema import DataConfig, MethodConfig
    from lmforge.model.load import Quantization, is_quantized
    from lmforge.train.rewards.reward_model import RewardModelScorer

    conversation = {"messages": [{"role": "user", "content": "Q3"}], "system": None, "tools": None}
    batch = RewardBatch(
        ["Q3"] * 2, ["abcdefgh", "ABC123!?"], [[1]] * 2, [None] * 2, {}, [conversation] * 2
    )
    full = RewardModelScorer(str(reward_model), DataConfig())
    four = RewardModelScorer(
        str(reward_model),
        DataConfig(),
        quantization=Quantization.of_frozen(4, MethodConfig(), torch.float32),
    ).to("cpu")
    assert is_quantized(four.model.pretrained_model)
    expected, got = full.score(batch), four.score(batch)
    assert got != expected  # 4-bit weights: near the full model's scores, not equal
    assert got == pytest.approx(expected, abs=0.05 * (abs(expected[0] - expected[1]) + 1))
    # trained under ppo with it; refused without a reward model to quantize
    write_rl_datasets(tmp_path / "data")
    run = run_train(
        tmp_path, tiny_model_dir, PPO, stage="ppo", dataset="prompts", max_steps=2,
        reward_model=str(reward_model), reward_model_quantization_bit=4,
    )  # fmt: skip
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history(run))
    from lmforge.errors import UserError

    with pytest.raises(UserError, match="reward_model_quantization_bit applies to reward_model"):
        run_train(
            tmp_path / "none", tiny_model_dir, PPO, stage="grpo", dataset="prompts",
            reward_funcs="exact_match", reward_model_quantization_bit=4, num_generations=2,
        )  # fmt: skip
