"""Pairwise preference losses (DPO sigmoid, hinge, IPO, ORPO, SimPO) and the sequence
log-probability helper, against values worked out by hand with math.log / math.exp."""

import math

import pytest
import torch

from lmforge.train.losses.logps import sequence_logps
from lmforge.train.losses.preference import PairwiseObjective, bco_loss, preference_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def log_sigmoid(x: float) -> float:
    return math.log(sigmoid(x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def approx(value: float):
    return pytest.approx(value, abs=1e-6)


# ---- sequence log-probabilities ---------------------------------------------------------------


def test_sequence_logps_sums_log_softmax_over_the_shifted_trained_tokens():
    # vocab of 3; logits[:, t] predicts labels[:, t + 1]
    logits = torch.tensor(
        [
            [
                [1.0, 2.0, 3.0],  # predicts labels[0, 1] = 2
                [0.0, 0.0, math.log(2)],  # predicts labels[0, 2] = 0
                [100.0, -100.0, 0.0],  # predicts labels[0, 3] = -100: not counted
                [50.0, 0.0, 0.0],  # the last position predicts nothing
            ],
            [[9.0, 0.0, 0.0]] * 4,
        ]
    )
    labels = torch.tensor(
        [
            [-100, 2, 0, -100],
            [1, -100, -100, -100],  # the first label has no previous position: never scored
        ]
    )
    logps, tokens = sequence_logps(logits, labels)
    first = 3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3))
    second = 0.0 - math.log(1 + 1 + 2)  # probabilities 1/4, 1/4, 2/4
    assert logps.tolist() == [approx(first + second), approx(0.0)]
    assert tokens.tolist() == [2, 0]
    assert logps.dtype == torch.float32


def test_sequence_logps_computes_in_float32_from_half_precision_logits():
    logits = torch.tensor([[[0.0, math.log(3), 0.0], [0.0, 0.0, 0.0]]], dtype=torch.bfloat16)
    logps, tokens = sequence_logps(logits, torch.tensor([[-100, 1]]))
    assert logps.dtype == torch.float32 and tokens.tolist() == [1]
    # bf16 rounds log(3) to 1.1015625; the softmax itself runs in float32
    x = float(torch.tensor(math.log(3), dtype=torch.bfloat16))
    assert logps.item() == approx(x - math.log(math.exp(x) + 2))


# ---- DPO family with a reference ----------------------------------------------------------------

# policy chosen -1.0, rejected -2.0; reference -1.5 / -1.5: ratios +0.5 / -0.5, margin 1.0
POLICY_C, POLICY_R, REF_C, REF_R = -1.0, -2.0, -1.5, -1.5


def referenced(kind: str, beta: float, chosen_tokens=(1,), rejected_tokens=(1,)):
    return preference_loss(
        PairwiseObjective(kind, beta),
        t(POLICY_C),
        t(POLICY_R),
        torch.tensor(chosen_tokens),
        torch.tensor(rejected_tokens),
        t(REF_C),
        t(REF_R),
    )


def test_sigmoid_dpo_by_hand():
    losses, chosen_rewards, rejected_rewards = referenced("sigmoid", 0.1)
    margin = (POLICY_C - REF_C) - (POLICY_R - REF_R)  # 1.0
    assert losses.item() == approx(-log_sigmoid(0.1 * margin))  # 0.644397
    assert losses.item() == approx(0.6443966600735709)
    assert chosen_rewards.item() == approx(0.1 * 0.5)
    assert rejected_rewards.item() == approx(0.1 * -0.5)


def test_sigmoid_dpo_gradient_by_hand():
    chosen, rejected = t(POLICY_C).requires_grad_(), t(POLICY_R).requires_grad_()
    losses, _, _ = preference_loss(
        PairwiseObjective("sigmoid", 0.1),
        chosen,
        rejected,
        torch.tensor([1]),
        torch.tensor([1]),
        t(REF_C),
        t(REF_R),
    )
    losses.sum().backward()
    # d/dm -log sigmoid(beta m) = -beta (1 - sigmoid(beta m)); m = chosen - rejected + const
    assert chosen.grad.item() == approx(-0.1 * (1 - sigmoid(0.1)))
    assert rejected.grad.item() == approx(0.1 * (1 - sigmoid(0.1)))


def test_sigmoid_dpo_is_log_2_when_policy_equals_reference():
    losses, chosen_rewards, _ = preference_loss(
        PairwiseObjective("sigmoid", 0.5),
        t(-3.0),
        t(-4.0),
        torch.tensor([2]),
        torch.tensor([2]),
        t(-3.0),
        t(-4.0),
    )
    assert losses.item() == approx(math.log(2)) and chosen_rewards.item() == 0


def test_hinge_by_hand():
    losses, chosen_rewards, rejected_rewards = referenced("hinge", 0.1)
    assert losses.item() == approx(max(0.0, 1 - 0.1 * 1.0))  # 0.9
    assert (chosen_rewards.item(), rejected_rewards.item()) == (approx(0.05), approx(-0.05))
    losses, _, _ = referenced("hinge", 2.0)  # beta * margin = 2 > 1: no loss
    assert losses.item() == 0.0


def test_ipo_uses_per_token_average_ratios_by_hand():
    losses, chosen_rewards, rejected_rewards = referenced("ipo", 0.1, (2,), (4,))
    chosen_avg = (POLICY_C - REF_C) / 2  # 0.25
    rejected_avg = (POLICY_R - REF_R) / 4  # -0.125
    assert losses.item() == approx((chosen_avg - rejected_avg - 1 / (2 * 0.1)) ** 2)  # 21.390625
    assert losses.item() == approx(21.390625)
    # the logged rewards stay beta * (summed) ratio
    assert (chosen_rewards.item(), rejected_rewards.item()) == (approx(0.05), approx(-0.05))


def test_ipo_zero_token_rows_divide_by_one():
    losses, _, _ = referenced("ipo", 0.5, (0,), (1,))
    assert losses.item() == approx((0.5 - -0.5 - 1.0) ** 2)  # 0


def test_reference_losses_need_reference_logps():
    with pytest.raises(ValueError, match="needs reference"):
        preference_loss(
            PairwiseObjective("sigmoid", 0.1),
            t(-1.0),
            t(-2.0),
            torch.tensor([1]),
            torch.tensor([1]),
        )


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown pref_loss"):
        referenced("kto_pair", 0.1)


# ---- reference-free: SimPO, ORPO ------------------------------------------------------------

# chosen: -2.0 over 4 tokens (average -0.5); rejected: -3.0 over 2 tokens (average -1.5)


def reference_free(kind: str, beta: float, simpo_gamma: float = 0.5, **kwargs):
    return preference_loss(
        PairwiseObjective(kind, beta, simpo_gamma=simpo_gamma),
        t(-2.0),
        t(-3.0),
        torch.tensor([4]),
        torch.tensor([2]),
        **kwargs,
    )


def test_simpo_by_hand_with_default_and_given_gamma():
    losses, chosen_rewards, rejected_rewards = reference_free("simpo", 2.0)
    assert losses.item() == approx(-log_sigmoid(2.0 * (-0.5 - -1.5) - 0.5))  # log(1 + e^-1.5)
    assert losses.item() == approx(math.log1p(math.exp(-1.5)))
    assert (chosen_rewards.item(), rejected_rewards.item()) == (approx(-1.0), approx(-3.0))
    losses, _, _ = reference_free("simpo", 2.0, simpo_gamma=0.0)
    assert losses.item() == approx(-log_sigmoid(2.0))
    losses, _, _ = reference_free("simpo", 2.0, simpo_gamma=3.0)
    assert losses.item() == approx(-log_sigmoid(-1.0))


def test_simpo_ignores_reference_logps():
    with_ref, _, _ = reference_free(
        "simpo", 2.0, ref_chosen_logps=t(5.0), ref_rejected_logps=t(9.0)
    )
    without, _, _ = reference_free("simpo", 2.0)
    assert with_ref.item() == without.item()


def test_orpo_by_hand():
    beta = 0.1
    losses, chosen_rewards, rejected_rewards = reference_free("orpo", beta)
    chosen_avg, rejected_avg = -0.5, -1.5

    def log_odds(avg_logp: float) -> float:  # log(p / (1 - p)) with p = exp(avg log p)
        p = math.exp(avg_logp)
        return math.log(p / (1 - p))

    ratio = log_odds(chosen_avg) - log_odds(rejected_avg)
    expected = -chosen_avg - beta * log_sigmoid(ratio)  # NLL of chosen + odds-ratio term
    assert losses.item() == approx(expected)
    assert (chosen_rewards.item(), rejected_rewards.item()) == (approx(-0.05), approx(-0.15))


def test_reference_free_losses_batch_rows_independently():
    losses, _, _ = preference_loss(
        PairwiseObjective("simpo", 1.0, simpo_gamma=0.0),
        t(-2.0, -1.0),
        t(-3.0, -1.0),
        torch.tensor([4, 0]),  # a row without trained tokens divides by 1
        torch.tensor([2, 1]),
    )
    assert losses.tolist() == [approx(-log_sigmoid(1.0)), approx(math.log(2))]


# ---- the SFT (ftx) term, added by the pairwise trainer ------------------------------------------


class TableModel(torch.nn.Module):
    """A causal LM whose next-token logits depend only on the current token."""

    def __init__(self, rows):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(rows))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.table[input_ids])


def test_pairwise_trainer_adds_ftx_times_chosen_nll_per_token(tmp_path):
    from transformers import TrainingArguments

    from lmforge.train.trainers.preference import PairwisePreferenceTrainer

    # after token 0 the policy says [1/4, 1/2, 1/4], the reference [1/3, 1/3, 1/3]
    policy = TableModel([[0.0, math.log(2), 0.0]] * 3)
    reference = TableModel([[0.0, 0.0, 0.0]] * 3)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    batch = {  # chosen row [0, 1] then rejected row [0, 2], one trained token each
        "input_ids": torch.tensor([[0, 1], [0, 2]]),
        "attention_mask": torch.ones(2, 2, dtype=torch.long),
        "labels": torch.tensor([[-100, 1], [-100, 2]]),
    }
    margin = (math.log(1 / 2) - math.log(1 / 3)) - (math.log(1 / 4) - math.log(1 / 3))  # log 2
    dpo = -log_sigmoid(0.1 * margin)
    for ftx, expected in ((0.0, dpo), (0.5, dpo + 0.5 * -math.log(1 / 2))):
        trainer = PairwisePreferenceTrainer(
            model=policy,
            args=args,
            objective=PairwiseObjective("sigmoid", 0.1, ftx=ftx),
            ref_model=reference,
        )
        assert trainer.compute_loss(policy, batch).item() == approx(expected)


# ---- cDPO label smoothing, LD-DPO, BCO ---------------------------------------------------------


def test_label_smoothing_takes_a_share_of_labels_as_flipped_by_hand():
    losses, _, _ = preference_loss(
        PairwiseObjective("sigmoid", 0.1, label_smoothing=0.2),
        t(POLICY_C),
        t(POLICY_R),
        torch.tensor([1]),
        torch.tensor([1]),
        t(REF_C),
        t(REF_R),
    )
    # margin 1.0: -(1 - 0.2) log sigmoid(0.1) - 0.2 log sigmoid(-0.1)
    assert losses.item() == approx(-0.8 * log_sigmoid(0.1) - 0.2 * log_sigmoid(-0.1))
    assert losses.item() == approx(0.6643966600735709)


def _uniform_logits(rows: int, length: int) -> torch.Tensor:
    """Logits over a vocabulary of 4 where token 1 has probability 1/2 and the others 1/6."""
    return torch.tensor([0.0, math.log(3), 0.0, 0.0]).expand(rows, length, 4).clone()


def test_ld_alpha_weighs_tokens_past_the_shorter_answer_by_hand():
    # pair 0: chosen has 2 trained tokens, rejected 4 (two past the shared 2);
    # pair 1: chosen 3 tokens in two turns (a gap), rejected 1
    x = -100
    labels = torch.tensor(
        [
            [x, x, 1, 1, x, x, x],
            [x, x, 1, 1, x, 2, x],  # chosen of pair 1: tokens 1, 1, then 2 after a gap
            [x, x, 1, 2, 1, 2, x],
            [x, x, 2, x, x, x, x],
        ]
    )
    logits = _uniform_logits(4, 7)
    one, other = math.log(1 / 2), math.log(1 / 6)
    plain, counts = sequence_logps(logits, labels)
    weighted, same_counts = sequence_logps(logits, labels, ld_alpha=0.25)
    assert counts.tolist() == same_counts.tolist() == [2, 3, 4, 1]
    assert plain.tolist() == [
        approx(2 * one),
        approx(2 * one + other),
        approx(2 * one + 2 * other),
        approx(other),
    ]
    assert weighted.tolist() == [
        approx(2 * one),  # the shorter answer: every token counts
        approx(one + 0.25 * (one + other)),  # shared length 1: its 2nd and 3rd tokens weighed
        approx(one + other + 0.25 * (one + other)),  # shared length 2
        approx(other),
    ]
    # alpha 1 is plain DPO
    assert sequence_logps(logits, labels, ld_alpha=1.0)[0].tolist() == plain.tolist()


def test_bco_loss_by_hand():
    losses = bco_loss(t(0.3), t(-0.2), 0.05)
    assert losses.item() == approx(-log_sigmoid(0.25) - log_sigmoid(0.25))


def _pair_batch():
    return {  # chosen row [0, 1] then rejected row [0, 2], one trained token each
        "input_ids": torch.tensor([[0, 1], [0, 2]]),
        "attention_mask": torch.ones(2, 2, dtype=torch.long),
        "labels": torch.tensor([[-100, 1], [-100, 2]]),
    }


def test_pairwise_trainer_mixes_bco_against_the_running_mean_reward(tmp_path):
    from transformers import TrainingArguments

    from lmforge.train.trainers.preference import PairwisePreferenceTrainer

    policy = TableModel([[0.0, math.log(2), 0.0]] * 3)  # after token 0: [1/4, 1/2, 1/4]
    reference = TableModel([[0.0, 0.0, 0.0]] * 3)  # [1/3, 1/3, 1/3]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    beta, weight = 0.1, 0.5
    trainer = PairwisePreferenceTrainer(
        model=policy,
        args=args,
        objective=PairwiseObjective("sigmoid", beta, bco_weight=weight),
        ref_model=reference,
    )
    chosen = beta * (math.log(1 / 2) - math.log(1 / 3))
    rejected = beta * (math.log(1 / 4) - math.log(1 / 3))
    dpo = -log_sigmoid(chosen - rejected)
    # first batch: the running mean is this batch's mean reward
    mean = (chosen + rejected) / 2
    bco = -log_sigmoid(chosen - mean) - log_sigmoid(-(rejected - mean))
    assert trainer.compute_loss(policy, _pair_batch()).item() == approx(
        (dpo + weight * bco) / (1 + weight)
    )
    # earlier batches stay in the baseline: two more, of mean rewards 1.0 and 0.0
    trainer.mean_reward.add(torch.tensor([1.0]))
    trainer.mean_reward.add(torch.tensor([0.0]))
    state = trainer.checkpoint_state()["bco_mean_reward"]
    assert state == {"total": approx(mean + 1.0), "count": 3}
    loss = trainer.compute_loss(policy, _pair_batch()).item()
    delta = (mean + 1.0 + mean) / 4
    bco = -log_sigmoid(chosen - delta) - log_sigmoid(-(rejected - delta))
    assert loss == approx((dpo + weight * bco) / (1 + weight))
    # evaluation judges against the baseline without moving it
    policy.eval()
    trainer.compute_loss(policy, _pair_batch())
    assert trainer.mean_reward.count == 4
    # a resumed trainer continues from the saved baseline
    resumed = PairwisePreferenceTrainer(
        model=policy,
        args=args,
        objective=PairwiseObjective("sigmoid", beta, bco_weight=weight),
        ref_model=reference,
    )
    resumed.restore_checkpoint_state(trainer.checkpoint_state())
    assert resumed.mean_reward.value == approx(delta)
