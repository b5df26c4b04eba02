"""SFT's weighted token losses (LLaMA-Factory's use_dft_loss, use_eaft_loss): the formulas by
hand, the chunked loss equal to the weighted loss from full logits (value and gradients, with
and without a softcap), and a training run that uses them."""

import json
import math

import pytest
import torch

from conftest import SHORT_SFT, run_train
from lmforge.errors import UserError
from lmforge.train.losses.linear_ce import linear_cross_entropy_sum
from lmforge.train.losses.token_weights import (
    DFTWeighting,
    EAFTWeighting,
    WeightedCrossEntropyLoss,
)


def test_dft_weighs_each_token_by_its_probability_by_hand():
    # vocabulary of 3; position 0 predicts label 2 with p 1/2, position 1 predicts 0 with p 1/4
    logits = torch.tensor([[[0.0, 0.0, math.log(2)], [0.0, math.log(2), math.log(1)], [9.0] * 3]])
    labels = torch.tensor([[-100, 2, 0]])
    loss = WeightedCrossEntropyLoss(DFTWeighting())({"logits": logits}, labels)
    expected = (0.5 * -math.log(1 / 2) + 0.25 * -math.log(1 / 4)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_eaft_weighs_each_token_by_the_entropy_of_its_top_20_by_hand():
    # 25 tokens: 4 likely ones (logit 10) and 21 near zero; the top 20 hold the 4 and 16 others
    logits = torch.zeros(1, 2, 25)
    logits[0, 0, :4] = 10.0
    labels = torch.tensor([[-100, 1]])
    others = 16 * math.exp(-10)
    probs = [1 / (4 + others)] * 4 + [math.exp(-10) / (4 + others)] * 16
    entropy = -sum(p * math.log(p) for p in probs)
    nll = -math.log(1 / (4 + 21 * math.exp(-10)))  # the loss itself is over all 25 tokens
    for alpha in (1.0, 0.5):
        loss = WeightedCrossEntropyLoss(EAFTWeighting(alpha))({"logits": logits}, labels)
        assert loss.item() == pytest.approx((entropy / 3) ** alpha * nll, rel=1e-5)


@pytest.mark.parametrize("weighting", [DFTWeighting(), EAFTWeighting(0.7)], ids=["dft", "eaft"])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_weighted_loss_and_gradients_equal_the_full_logits_formula(weighting, softcap):
    torch.manual_seed(3)
    hidden = torch.randn(2, 13, 16, requires_grad=True)
    weight = torch.randn(60, 16, requires_grad=True)
    labels = torch.randint(0, 60, (2, 13))
    labels[0, :5] = -100
    logits = hidden @ weight.t()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    plain = WeightedCrossEntropyLoss(weighting)({"logits": logits}, labels, num_items_in_batch=1)
    plain.backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    total, count = linear_cross_entropy_sum(
        hidden, weight, labels, softcap=softcap, chunk_tokens=4, weighting=weighting
    )
    total.backward()
    assert count == 2 * 12 - 4
    unweighted, _ = linear_cross_entropy_sum(
        hidden.detach(), weight.detach(), labels, softcap=softcap
    )
    assert total.item() != pytest.approx(unweighted.item(), rel=1e-2)  # the weights act
    assert total.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.allclose(hidden.grad, expected[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(weight.grad, expected[1], rtol=1e-4, atol=1e-6)


def _losses(run) -> list[float]:
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.parametrize("key", ["use_dft_loss", "use_eaft_loss"])
def test_sft_trains_with_the_weighted_loss_chunked_or_not(tmp_path, tiny_model_dir, key, caplog):
    caplog.set_level("INFO", logger="lmforge.train.run")
    plain = run_train(tmp_path / "plain", tiny_model_dir, SHORT_SFT, max_steps=3)
    chunked = run_train(tmp_path / "on", tiny_model_dir, SHORT_SFT, max_steps=3, **{key: True})
    full = run_train(
        tmp_path / "off", tiny_model_dir, SHORT_SFT, max_steps=3, chunked_loss=False, **{key: True}
    )
    assert _losses(chunked) == pytest.approx(_losses(full), rel=1e-4)
    assert _losses(chunked)[0] < 0.9 * _losses(plain)[0]  # weights below 1 on a random model
    name = "DFT" if key == "use_dft_loss" else "EAFT"
    loss_lines = [r.message for r in caplog.records if r.message.startswith("  loss: ")]
    assert loss_lines[0] == "  loss: cross-entropy on trained tokens, chunked (no full logits)"
    assert loss_lines[1].startswith(f"  loss: {name}-weighted")
    assert loss_lines[1].endswith("cross-entropy on trained tokens, chunked (no full logits)")
    assert loss_lines[2].endswith("cross-entropy on trained tokens, from full logits")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"use_dft_loss": True, "use_eaft_loss": True}, "are both true"),
        ({"use_dft_loss": True, "stage": "pt"}, "this is stage pt"),
        ({"use_eaft_loss": True, "use_liger_kernel": True}, "use_liger_kernel computes"),
    ],
)
def test_weighted_losses_that_cannot_apply_are_refused(tmp_path, tiny_model_dir, settings, message):
    with pytest.raises(UserError, match=message):
        run_train(tmp_path, tiny_model_dir, SHORT_SFT, **settings)
