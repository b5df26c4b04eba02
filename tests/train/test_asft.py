"""ASFT, anchored SFT (LLaMA-Factory's use_asft_loss, asft_alpha; train/losses/anchored.py): the
formula by hand, the chunked form equal to the one from full logits (value and gradients),
and training runs: at the first step the model is its reference, so the KL term is zero and
the loss is DFT's exactly; afterwards it is not."""

import json
import math

import pytest
import torch

from conftest import SHORT_SFT, run_train
from lmforge.errors import UserError
from lmforge.train.losses.anchored import (
    AnchoredLogitsLoss,
    anchored_linear_sum,
    anchored_loss_terms,
    trained_positions,
)


def test_asft_is_dft_plus_alpha_times_kl_from_the_reference_by_hand():
    # vocabulary of 3: the model's p = (1/4, 1/4, 1/2), the target 2 (p 1/2); the reference's
    # q = (1/3, 1/3, 1/3): KL(q || p) = 1/3 ln(4/3) * 2 + 1/3 ln(2/3) = 1/3 ln(32/27)
    logits = torch.tensor([[[9.0] * 3, [0.0, 0.0, math.log(2)], [9.0] * 3]])
    reference = torch.zeros(1, 3, 3)
    labels = torch.tensor([[-100, -100, 2]])
    loss = AnchoredLogitsLoss(alpha=0.1)
    loss.reference = reference
    value = loss({"logits": logits}, labels)
    expected = 0.5 * math.log(2) + 0.1 * math.log(32 / 27) / 3
    assert value.item() == pytest.approx(expected, abs=1e-6)
    assert loss.reference is None  # held for one step only
    # the model's own prediction as reference: no KL, DFT's loss alone
    same = anchored_loss_terms(logits[0, 1:2], logits[0, 1:2], torch.tensor([2]), 0.1)
    assert same.item() == pytest.approx(0.5 * math.log(2), abs=1e-6)


def test_the_gradient_is_w_plus_alpha_times_p_minus_alpha_q_minus_w_at_the_target():
    logits = torch.tensor([[0.0, 0.0, math.log(2)]], requires_grad=True)
    anchored_loss_terms(logits, torch.zeros(1, 3), torch.tensor([2]), 0.1).sum().backward()
    p, q, w, alpha = torch.tensor([0.25, 0.25, 0.5]), torch.full((3,), 1 / 3), 0.5, 0.1
    expected = (w + alpha) * p - alpha * q - w * torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(logits.grad[0], expected, atol=1e-6)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunked_asft_equals_the_full_logits_formula(softcap, dtype):
    torch.manual_seed(3)
    hidden = torch.randn(2, 13, 16, requires_grad=True)
    weight = torch.randn(60, 16, requires_grad=True)
    ref_hidden, ref_weight = torch.randn(2, 13, 16), torch.randn(60, 16)
    labels = torch.randint(0, 60, (2, 13))
    labels[0, :5] = -100
    keep, targets = trained_positions(labels)

    def project(h, w):
        logits = h.to(dtype) @ w.to(dtype).t()
        return logits if softcap is None else torch.tanh(logits / softcap) * softcap

    plain = anchored_loss_terms(
        project(hidden, weight)[:, :-1][keep],
        project(ref_hidden, ref_weight)[:, :-1][keep],
        targets,
        alpha=0.3,
    ).sum()
    plain.backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    total, count = anchored_linear_sum(
        hidden, weight, ref_hidden, ref_weight, labels,
        alpha=0.3, softcap=softcap, chunk_tokens=4, dtype=dtype,
    )  # fmt: skip
    (2 * total).backward()  # the incoming gradient scales both
    assert count == 2 * 12 - 5 + 1
    tolerance = 1e-5 if dtype == torch.float32 else 2e-3
    assert total.item() == pytest.approx(plain.item(), rel=tolerance)
    scale = expected[0].abs().max()
    assert (hidden.grad / 2 - expected[0]).abs().max() <= tolerance * 10 * scale
    assert (weight.grad / 2 - expected[1]).abs().max() <= tolerance * 10 * expected[1].abs().max()


def _losses(run) -> list[float]:
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.parametrize(
    "settings",
    [{}, {"chunked_loss": False}, {"finetuning_type": "full", "learning_rate": 1e-3}],
    ids=["lora", "full-logits", "full-tuning"],
)
def test_asft_starts_at_dfts_loss_then_the_kl_term_acts(tmp_path, tiny_model_dir, settings):
    base = {**SHORT_SFT, "max_steps": 3, "save_steps": 100, **settings}
    dft = run_train(tmp_path / "dft", tiny_model_dir, base, use_dft_loss=True)
    asft = run_train(tmp_path / "asft", tiny_model_dir, base, use_asft_loss=True, asft_alpha=5.0)
    dft_losses, asft_losses = _losses(dft), _losses(asft)
    # The first step's model is its reference: KL 0 (and its gradient p - q too), so DFT's
    # loss and update. The second step starts from the same model in both runs, now moved
    # from the reference: DFT's loss plus alpha times a KL above zero.
    assert asft_losses[0] == pytest.approx(dft_losses[0], rel=1e-6)
    assert asft_losses[1] > dft_losses[1] * 1.01
    assert all(math.isfinite(x) for x in asft_losses)


def test_the_chunked_and_the_full_logits_asft_runs_log_the_same_losses(tmp_path, tiny_model_dir):
    base = {**SHORT_SFT, "max_steps": 3, "save_steps": 100, "use_asft_loss": True}
    chunked = run_train(tmp_path / "on", tiny_model_dir, base)
    full = run_train(tmp_path / "off", tiny_model_dir, base, chunked_loss=False)
    assert _losses(chunked) == pytest.approx(_losses(full), rel=1e-4)


@pytest.mark.parametrize(
    "packing",
    [{"packing": True}, {"padding_free": True}, {"padding_free": True, "ref_model": "MODEL"}],
    ids=["packing", "padding-free", "padding-free-ref-model"],
)
def test_the_reference_reads_packed_rows_as_the_model_does(tmp_path, tiny_model_dir, packing):
    # With the sequence boundaries lost, the reference would see the samples attend to each
    # other while the model does not: a KL term at the first step, where there is none. An
    # explicit ref_model (here the same weights, loaded again) is given the model's kernel.
    packing = {k: str(tiny_model_dir) if v == "MODEL" else v for k, v in packing.items()}
    base = {**SHORT_SFT, "max_steps": 1, "save_steps": 100, "cutoff_len": 64, **packing}
    dft = run_train(tmp_path / "dft", tiny_model_dir, base, use_dft_loss=True)
    asft = run_train(tmp_path / "asft", tiny_model_dir, base, use_asft_loss=True, asft_alpha=5.0)
    assert _losses(asft)[0] == pytest.approx(_losses(dft)[0], rel=1e-6)


def test_the_plan_names_the_loss_and_its_reference(tmp_path, tiny_model_dir, caplog):
    caplog.set_level("INFO")
    run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=1, use_asft_loss=True)
    messages = [r.message for r in caplog.records]
    assert (
        "  loss: ASFT: DFT-weighted cross-entropy + 0.1 x KL(reference || model) on trained "
        "tokens, chunked (no full logits)"
    ) in messages
    assert "Reference model: the base model (adapters disabled), no extra copy" in messages


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"use_dft_loss": True}, "use_dft_loss and use_asft_loss are both true"),
        ({"stage": "pt"}, "this is stage pt"),
        ({"use_liger_kernel": True}, "use_liger_kernel computes"),
    ],
)
def test_asft_settings_that_cannot_apply_are_refused(tmp_path, tiny_model_dir, settings, message):
    with pytest.raises(UserError, match=message):
        run_train(tmp_path, tiny_model_dir, SHORT_SFT, use_asft_loss=True, **settings)
