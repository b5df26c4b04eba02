"""KTO and the Bradley-Terry reward-model loss, against values worked out by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from lmforge.train.losses.preference import bradley_terry_loss, kto_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def approx(value: float):
    return pytest.approx(value, abs=1e-6)


# ---- KTO ------------------------------------------------------------------------------------


def test_kto_desirable_and_undesirable_by_hand():
    # row 0 desirable, ratio -1.0 - -1.5 = 0.5; row 1 undesirable, ratio -2.0 - -1.0 = -1.0
    losses, rewards = kto_loss(
        0.1,
        t(-1.0, -2.0),
        t(-1.5, -1.0),
        torch.tensor([True, False]),
        t(0.2),
        desirable_weight=1.0,
        undesirable_weight=1.33,
    )
    z = 0.2
    assert losses.tolist() == [
        approx(1.0 * (1 - sigmoid(0.1 * (0.5 - z)))),  # 1 - sigmoid(0.03)
        approx(1.33 * (1 - sigmoid(0.1 * (z - -1.0)))),  # 1.33 (1 - sigmoid(0.12))
    ]
    assert rewards.tolist() == [approx(0.05), approx(-0.1)]


def test_kto_clamps_a_negative_kl_estimate_to_zero():
    losses, _ = kto_loss(0.5, t(-1.0, -1.0), t(-2.0, -2.0), torch.tensor([True, False]), t(-0.3))
    assert losses.tolist() == [approx(1 - sigmoid(0.5 * 1.0)), approx(1 - sigmoid(0.5 * -1.0))]


def test_kto_weights_and_a_detached_kl():
    logps = t(-1.0, -1.0).requires_grad_()
    kl = t(0.4).requires_grad_()
    desirable = torch.tensor([True, False])
    losses, _ = kto_loss(1.0, logps, t(-1.0, -1.0), desirable, kl, 2.0, 3.0)
    assert losses.tolist() == [approx(2 * (1 - sigmoid(-0.4))), approx(3 * (1 - sigmoid(0.4)))]
    losses.sum().backward()
    assert kl.grad is None  # the KL estimate is a baseline, not trained through
    s = sigmoid(-0.4)  # d/dx w (1 - sigmoid(x)) = -w s (1 - s); x = +-(ratio - z)
    assert logps.grad.tolist() == [approx(-2 * s * (1 - s)), approx(3 * s * (1 - s))]


class TableModel(torch.nn.Module):
    """A causal LM whose next-token logits depend only on the current token."""

    def __init__(self, rows):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(rows))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])


def test_kto_trainer_estimates_kl_from_the_mismatched_rows(tmp_path):
    from transformers import TrainingArguments

    from lmforge.data.encoding.collate import KTOCollator
    from lmforge.data.encoding.encode import add_kl_completions
    from lmforge.train.trainers.preference import KTOTrainer

    features = [
        {"input_ids": [0, 1], "labels": [-100, 1], "prompt_ids": [0], "answer_ids": [1],
         "kto_label": True},
        {"input_ids": [2, 0], "labels": [-100, 0], "prompt_ids": [2], "answer_ids": [0],
         "kto_label": False},
    ]  # fmt: skip
    add_kl_completions(features, cutoff_len=8)  # each prompt with the other record's answer
    batch = KTOCollator(pad_token_id=0)(features)  # KL rows: [0, 0] and [2, 1]
    # policy after 0: [1/4, 1/2, 1/4]; after 2: [1/5, 3/5, 1/5]; reference uniform (1/3)
    policy = TableModel([[0.0, math.log(2), 0.0], [0.0, 0.0, 0.0], [0.0, math.log(3), 0.0]])
    reference = TableModel([[0.0, 0.0, 0.0]] * 3)
    trainer = KTOTrainer(
        model=policy,
        args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
        pref_beta=0.1,
        desirable_weight=1.0,
        undesirable_weight=2.0,
        ref_model=reference,
    )
    ratio = [math.log(0.5 * 3), math.log(0.2 * 3)]  # p(1 | 0), p(0 | 2) over 1/3
    z = (math.log(0.25 * 3) + math.log(0.6 * 3)) / 2  # p(0 | 0), p(1 | 2): mean log-ratio > 0
    expected = (
        1.0 * (1 - sigmoid(0.1 * (ratio[0] - z))) + 2.0 * (1 - sigmoid(0.1 * (z - ratio[1])))
    ) / 2
    assert trainer.compute_loss(policy, batch).item() == approx(expected)


# ---- Bradley-Terry reward model -----------------------------------------------------------------


def test_bradley_terry_by_hand():
    losses = bradley_terry_loss(t(1.0, 0.0, 3.0), t(-0.5, 2.0, 3.0))
    assert losses.tolist() == [
        approx(math.log(1 + math.exp(-1.5))),
        approx(math.log(1 + math.exp(2.0))),
        approx(math.log(2)),
    ]


def test_reward_scores_come_from_the_last_real_token():
    from lmforge.train.trainers.value_head import ModelWithValueHead, ValueHead, last_token_scores

    hidden = torch.tensor(
        [[[1.0, 0.0], [2.0, 1.0], [9.0, 9.0]], [[0.5, 0.5], [7.0, 7.0], [3.0, -1.0]]]
    )
    model = lambda **kwargs: SimpleNamespace(hidden_states=(None, hidden))  # noqa: E731
    head = ValueHead(2)
    with torch.no_grad():
        head.summary.weight.copy_(torch.tensor([[1.0, -2.0]]))
        head.summary.bias.fill_(0.5)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # right padding: row 0 ends at position 1
    ids = torch.zeros(2, 3, dtype=torch.long)
    scores = last_token_scores(ModelWithValueHead(model, head), ids, mask)
    assert scores.tolist() == [approx(2.0 - 2.0 + 0.5), approx(3.0 + 2.0 + 0.5)]
