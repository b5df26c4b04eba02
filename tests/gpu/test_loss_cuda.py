"""GPU-only (skipped without CUDA; `python -m pytest tests/gpu` on a GPU machine, which
benchmarks/gpu/run.sh runs). The chunked loss (train/losses/linear_ce.py) on CUDA: 512-position
chunks, each row shifted by its maximum (the CPU leaves that out where it is safe), the
softmax's row terms applied after the matmuls; against the plain formula, and a real training
run with and without it."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import SHORT_SFT, run_train
from lmforge.train.losses.linear_ce import chunk_tokens_for, linear_cross_entropy_sum

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tests/gpu)"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("softcap", [None, 30.0], ids=["plain", "softcap"])
def test_chunked_loss_equals_the_plain_formula(dtype, softcap):
    """Loss within 1e-4 (fp32) or 1e-2 (bf16, against the same bf16-rounded logits) of
    cross_entropy over full logits, and both gradients (hidden states and a training head)
    within the same tolerance, over several chunks and rows far from zero."""
    torch.manual_seed(0)
    vocab, width = 5000, 64
    hidden = torch.randn(2, 700, width, device="cuda")
    hidden[1, :, 0] = 3.0  # the second sequence's logits lie ~90 above zero
    weight = torch.randn(vocab, width, device="cuda") * 0.3
    weight[:, 0] = 30.0
    hidden = hidden.to(dtype).requires_grad_()
    weight = weight.to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (2, 700), device="cuda")
    labels[0, :100] = -100
    total, count = linear_cross_entropy_sum(
        hidden, weight, labels, softcap=softcap, chunk_tokens=chunk_tokens_for(vocab, "cuda")
    )
    total.backward()
    h32 = hidden.detach().float().requires_grad_()
    w32 = weight.detach().float().requires_grad_()
    logits = (h32 @ w32.t()).to(dtype).float()[:, :-1]
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    plain = F.cross_entropy(
        logits.reshape(-1, vocab), labels[:, 1:].reshape(-1), reduction="sum", ignore_index=-100
    )
    plain.backward()
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-4
    assert count == 2 * 699 - 99
    assert torch.isfinite(total) and total.item() == pytest.approx(plain.item(), rel=tolerance)
    for got, want in ((hidden.grad, h32.grad), (weight.grad, w32.grad)):
        assert torch.isfinite(got).all()
        error = (got.float() - want).norm() / want.norm()
        assert error < 10 * tolerance, error


def test_training_with_and_without_the_chunked_loss_logs_the_same_losses(tmp_path, tiny_model_dir):
    def losses(run):
        lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    settings = {"bf16": True, "max_steps": 4, "logging_steps": 1}
    on = run_train(tmp_path / "on", tiny_model_dir, SHORT_SFT, chunked_loss=True, **settings)
    off = run_train(tmp_path / "off", tiny_model_dir, SHORT_SFT, chunked_loss=False, **settings)
    assert losses(on) == pytest.approx(losses(off), rel=1e-2)
