"""The chunked loss equals the plain causal-LM loss: same value and same gradients on a fixed
batch, for several architectures, and the same training curve end to end."""

import json

import pytest
import torch

from conftest import SHORT_SFT, build_tiny_decoder, build_tiny_model, run_train
from lmforge.train.losses import linear_ce
from lmforge.train.losses.linear_ce import (
    chunk_tokens_for,
    linear_cross_entropy_sum,
    logits_to_keep_for,
)


def tiny_llama(vocab):
    return build_tiny_decoder("llama", vocab, tie_word_embeddings=False)


def tiny_qwen2(vocab):
    return build_tiny_decoder("qwen2", vocab)


@pytest.mark.parametrize(
    "build", [build_tiny_model, tiny_llama, tiny_qwen2], ids=["gemma3", "llama", "qwen2"]
)
@pytest.mark.parametrize("chunk_tokens", [3, 1024])
def test_loss_and_gradients_equal_the_plain_path(build, chunk_tokens):
    model = build(120)
    torch.manual_seed(1)
    ids = torch.randint(0, 120, (3, 16))
    labels = ids.clone()
    labels[:, :6] = -100  # a masked prompt
    labels[2, 11:] = -100  # and padding
    plain = model(input_ids=ids, labels=labels).loss
    plain.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
    total, count = linear_cross_entropy_sum(
        out.hidden_states[-1],
        model.get_output_embeddings().weight,
        labels,
        chunk_tokens=chunk_tokens,
    )
    chunked = total / count
    chunked.backward()
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-4)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, expected[name], rtol=1e-4, atol=1e-6), name


def test_training_curve_is_the_same_with_and_without(tmp_path, tiny_model_dir):
    def losses(run):
        lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    on = run_train(tmp_path / "on", tiny_model_dir, SHORT_SFT, chunked_loss=True, max_steps=4)
    off = run_train(tmp_path / "off", tiny_model_dir, SHORT_SFT, chunked_loss=False, max_steps=4)
    assert losses(on) == pytest.approx(losses(off), rel=1e-4)


def test_softcapped_logits_loss_and_gradients_equal_the_plain_formula():
    torch.manual_seed(2)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :4] = -100
    logits = torch.tanh(hidden @ weight.t() / 3.0) * 3.0
    plain = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), reduction="sum"
    )
    plain.backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    total, count = linear_cross_entropy_sum(hidden, weight, labels, softcap=3.0, chunk_tokens=4)
    (total * 0.5).backward()  # the upstream gradient scales what the forward pass computed
    assert count == 2 * 8 - 3
    assert total.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.allclose(hidden.grad, 0.5 * expected[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(weight.grad, 0.5 * expected[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_bf16_projection_gradients_equal_the_plain_formula_within_bf16_rounding(softcap):
    """Under mixed precision the projection runs in bf16 and the softmax in fp32; the gradient's
    row terms (1 / sum, minus one at the target) are applied after the matmuls. Against the
    plain formula on the same bf16 logits in fp32: loss within 1e-3, both gradients within bf16
    rounding (what autocast's own head and loss would give)."""
    torch.manual_seed(4)
    hidden = torch.randn(2, 21, 32).to(torch.bfloat16).requires_grad_()
    weight = (torch.randn(300, 32) * 0.5).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 300, (2, 21))
    labels[0, :7] = -100
    total, count = linear_cross_entropy_sum(
        hidden, weight, labels, softcap=softcap, chunk_tokens=8, dtype=torch.bfloat16
    )
    total.backward()
    h32 = hidden.detach().float().requires_grad_()
    w32 = weight.detach().float().requires_grad_()
    logits = (h32 @ w32.t()).bfloat16().float()[:, :-1]
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    plain = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 300), labels[:, 1:].reshape(-1), reduction="sum"
    )
    plain.backward()
    assert count == 2 * 20 - 6
    assert total.item() == pytest.approx(plain.item(), rel=1e-3)
    for got, want in ((hidden.grad, h32.grad), (weight.grad, w32.grad)):
        assert got.dtype == torch.bfloat16
        error = (got.float() - want).norm() / want.norm()
        assert error < 1e-2, error


@pytest.mark.parametrize("chunk_tokens", [5, 64], ids=["three chunks", "one chunk"])
def test_fp32_head_projected_in_bf16_gets_an_fp32_gradient_summed_over_chunks(chunk_tokens):
    """Full fine-tuning under bf16 mixed precision: fp32 master weights, the projection in
    bf16. Each chunk's weight gradient is a bf16 product added to one fp32 sum; the gradient
    handed back is fp32 and equals the plain formula on the same bf16 logits within bf16
    rounding, scaled by the upstream gradient once."""
    torch.manual_seed(5)
    hidden = torch.randn(2, 9, 32).requires_grad_()
    weight = (torch.randn(300, 32) * 0.5).requires_grad_()
    labels = torch.randint(0, 300, (2, 9))
    labels[1, :3] = -100
    total, count = linear_cross_entropy_sum(
        hidden, weight, labels, chunk_tokens=chunk_tokens, dtype=torch.bfloat16
    )
    (total * 0.25).backward()
    h32 = hidden.detach().clone().requires_grad_()
    w32 = weight.detach().clone().requires_grad_()
    logits = (h32.bfloat16() @ w32.bfloat16().t()).float()[:, :-1]
    plain = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 300), labels[:, 1:].reshape(-1), reduction="sum"
    )
    (plain * 0.25).backward()
    assert count == 2 * 8 - 2
    assert total.item() == pytest.approx(plain.item(), rel=1e-3)
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    for got, want in ((hidden.grad, h32.grad), (weight.grad, w32.grad)):
        error = (got - want).norm() / want.norm()
        assert error < 1e-2, error


def test_no_trained_position_gives_zero_gradients():
    """A batch whose labels are all masked: loss 0 and zero gradients, the head's included
    (its fp32 sum is written by the first chunk, and here there is none)."""
    hidden = torch.randn(1, 6, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    labels = torch.full((1, 6), -100)
    total, count = linear_cross_entropy_sum(hidden, weight, labels, dtype=torch.bfloat16)
    total.backward()
    assert count == 0 and total.item() == 0.0
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert hidden.grad.abs().sum().item() == 0.0


def test_a_second_backward_through_the_same_graph_is_refused_not_scaled_twice():
    """The gradients are scaled in place in the backward pass (no weight-sized copy), so
    retain_graph's second backward stops with autograd's in-place error."""
    hidden = torch.randn(1, 6, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    total, _ = linear_cross_entropy_sum(hidden, weight, torch.randint(0, 20, (1, 6)))
    (total * 0.5).backward(retain_graph=True)
    first = weight.grad.clone()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        total.backward()
    assert torch.equal(weight.grad, first)


@pytest.mark.parametrize("logit_offset", [0.0, 200.0, -300.0], ids=["near0", "large", "negative"])
def test_rows_far_from_zero_are_shifted_by_their_maximum(logit_offset, monkeypatch):
    """On a CPU exp is taken of the logits themselves where that is safe; rows whose logits lie
    far above or below 0 (overflow, or underflow of every term) take the softmax's shift by the
    row maximum. The same loss and gradients either way, in fp32 to 1e-5."""
    torch.manual_seed(5)
    hidden = torch.randn(1, 13, 16)
    hidden[..., 0] = 1.0
    weight = torch.randn(70, 16)
    weight[:, 0] = logit_offset  # every logit moves by the offset, the softmax does not
    hidden.requires_grad_()
    weight.requires_grad_()
    labels = torch.randint(0, 70, (1, 13))
    shifted = []
    needs_shift = linear_ce._needs_shift

    def recorded(top):
        shifted.append(needs_shift(top))
        return shifted[-1]

    monkeypatch.setattr(linear_ce, "_needs_shift", recorded)
    total, _ = linear_cross_entropy_sum(hidden, weight, labels, chunk_tokens=5)
    assert shifted == [logit_offset != 0.0] * 3  # 12 positions in chunks of 5
    total.backward()
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    plain = torch.nn.functional.cross_entropy((h @ w.t())[0, :-1], labels[0, 1:], reduction="sum")
    plain.backward()
    assert torch.isfinite(total) and total.item() == pytest.approx(plain.item(), rel=1e-5)
    # the offset column's gradient is offset * (sum of p - 1) = 0 up to fp32 rounding, in both
    cancellation = 1e-5 + 1e-6 * abs(logit_offset)
    assert torch.allclose(hidden.grad, h.grad, rtol=1e-4, atol=cancellation)
    assert torch.allclose(weight.grad, w.grad, rtol=1e-4, atol=1e-5)


def test_no_gradient_work_under_no_grad():
    hidden = torch.randn(1, 5, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    with torch.no_grad():
        total, count = linear_cross_entropy_sum(hidden, weight, torch.randint(0, 20, (1, 5)))
    assert count == 4 and not total.requires_grad


def test_chunks_hold_128_mib_of_logits_whatever_the_vocabulary():
    assert chunk_tokens_for(262_144) == 128  # Gemma 3
    assert chunk_tokens_for(262_144, "cuda") == 512  # a GPU: larger chunks are faster
    assert chunk_tokens_for(128_256) == 261  # Llama 3
    assert chunk_tokens_for(32_000) == 1024  # capped
    assert chunk_tokens_for(10_000_000) == 32  # floored


@pytest.mark.parametrize("weights", ["bf16 frozen", "fp32"])
def test_the_trainer_loss_equals_the_models_own_under_bf16_autocast(weights):
    """What training runs under bf16 mixed precision: the model's forward inside autocast, the
    loss outside it. The loss takes the decoder's final hidden state (a forward hook, in the
    model's dtype) and projects in bf16, as autocast does for the model's own head; against the
    model's own loss under autocast, within bf16 rounding."""
    from lmforge.train.losses.linear_ce import LinearCrossEntropyLoss

    model = build_tiny_model(120)
    if weights == "bf16 frozen":
        model.to(torch.bfloat16)
    torch.manual_seed(3)
    ids = torch.randint(0, 120, (2, 16))
    labels = ids.clone()
    labels[:, :5] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=ids, labels=labels).loss.float()
    loss = LinearCrossEntropyLoss(model, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(input_ids=ids, logits_to_keep=logits_to_keep_for(model))
    assert outputs.logits.shape[1] == 0  # the model's own head projected no position
    assert loss._hidden.dtype == (torch.bfloat16 if weights == "bf16 frozen" else torch.float32)
    chunked = loss(outputs, labels)
    assert loss._hidden is None  # not kept past the step
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-2)
    with pytest.raises(RuntimeError, match="did not run through its decoder"):
        loss(outputs, labels)


def test_kv_shared_layers_keep_every_position_for_the_loss():
    """Gemma 4's KV-shared layers (E2B/E4B) read an int `logits_to_keep: 1` as "the last
    position only" and drop the others from the decoder's later layers; the loss needs them
    all. What the collator passes keeps them (and projects none in the model's own head): the
    loss equals the model's own."""
    from lmforge.train.losses.linear_ce import LinearCrossEntropyLoss

    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Gemma4ForCausalLM"):
        pytest.skip("this transformers has no Gemma 4")
    config = transformers.Gemma4TextConfig(
        vocab_size=120,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=16,
        num_kv_shared_layers=2,
        layer_types=["sliding_attention", "full_attention"] * 2,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=120,
    )
    torch.manual_seed(0)
    model = transformers.Gemma4ForCausalLM(config)
    ids = torch.randint(0, 120, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    plain = model(input_ids=ids, labels=labels).loss
    loss = LinearCrossEntropyLoss(model)
    outputs = model(input_ids=ids, logits_to_keep=logits_to_keep_for(model))
    assert loss._hidden.shape == (2, 12, 32) and outputs.logits.shape == (2, 0, 120)
    assert loss(outputs, labels).item() == pytest.approx(plain.item(), rel=1e-5)
    model(input_ids=ids, logits_to_keep=1)  # what was passed before: one position left
    assert loss._hidden.shape == (2, 1, 32)


def test_zero3_falls_back_to_the_models_own_loss_and_padded_rows(
    tmp_path, tiny_model_dir, monkeypatch, caplog
):
    """Under ZeRO-3 the output head's weight is a shard outside the head's forward, and the
    padding-free isolation check cannot run: the model's own loss and padded rows instead."""
    from lmforge.train.stages import language_model, sft

    monkeypatch.setattr(language_model, "zero3_enabled", lambda: True)
    monkeypatch.setattr(sft, "zero3_enabled", lambda: True)
    with caplog.at_level("INFO", logger="lmforge"):
        run = run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=2)
    assert "chunked_loss: ZeRO-3 shards the output head, so the plain loss is used" in caplog.text
    assert "padded rows: padding-free batches are not the default under ZeRO-3" in caplog.text
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_fsdp_falls_back_to_the_models_own_loss(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """After the forward pass FSDP turns the root unit's weights, the output head's among them,
    into flattened views of their shards (torch's _use_sharded_views), which is where the
    chunked loss would read the head: the model's own loss instead (runs on a GPU only:
    benchmarks/gpu/paths.py's fsdp)."""
    from lmforge.train.stages import language_model

    monkeypatch.setattr(language_model, "fsdp_requested", lambda config: True)
    with caplog.at_level("INFO", logger="lmforge"):
        run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=1, use_asft_loss=True)
    assert "chunked_loss: FSDP shards the output head, so the plain loss is used" in caplog.text
    assert "KL(reference || model) on trained tokens, from full logits" in caplog.text


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("dft", [False, True])
def test_trained_rows_give_the_merged_weights_loss_and_gradients(softcap, dft):
    """Rows of added tokens (peft's trainable tokens) project with their own values and get
    only their own gradient: equal to the loss over the merged weight (base with those rows
    replaced), its gradient for the hidden states and the rows' part of the weight's."""
    from lmforge.train.losses.token_weights import DFTWeighting

    torch.manual_seed(5)
    hidden = torch.randn(2, 11, 16, requires_grad=True)
    base = torch.randn(40, 16)
    ids = torch.tensor([37, 38, 39])
    values = torch.randn(3, 16, requires_grad=True)
    labels = torch.randint(0, 40, (2, 11))
    labels[0, 3:6] = torch.tensor([37, 39, 38])  # targets among the trained rows
    labels[1, :2] = -100
    weighting = DFTWeighting() if dft else None

    merged = base.index_copy(0, ids, values)
    expected, count = linear_cross_entropy_sum(
        hidden, merged, labels, softcap=softcap, chunk_tokens=4, weighting=weighting
    )
    expected.backward()
    want = hidden.grad.clone(), values.grad.clone()
    hidden.grad = values.grad = None
    total, same_count = linear_cross_entropy_sum(
        hidden,
        base,
        labels,
        softcap=softcap,
        chunk_tokens=4,
        weighting=weighting,
        trained_rows=(ids, values),
    )
    (total * 0.5).backward()
    assert same_count == count
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(hidden.grad, 0.5 * want[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(values.grad, 0.5 * want[1], rtol=1e-4, atol=1e-6)
    assert base.grad is None  # the frozen rows get none
