"""Per-sample sdpa for packed and padding-free rows: the same loss and gradients as padded
batches, sliding windows applied per sample, isolation proven, and sdpa back after training."""

import pytest
import torch

from conftest import build_tiny_decoder, build_tiny_model
from lmforge.data.encoding.collate import PadCollator, make_collator
from lmforge.model.packing import check_isolation, prepare_model_for_packing
from lmforge.model.varlen_attention import NAME, restore_attention, use_varlen_attention

VOCAB = 120


def tiny_llama_gqa():
    return build_tiny_decoder(
        "llama", VOCAB, num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa"
    )


def features(lengths):
    generator = torch.Generator().manual_seed(0)
    out = []
    for n in lengths:
        ids = torch.randint(3, VOCAB, (n,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3 :]})
    return out


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "build", [lambda: build_tiny_model(VOCAB), tiny_llama_gqa], ids=["gemma3-window", "llama-gqa"]
)
def test_loss_and_gradients_equal_the_padded_batch(build):
    model = build()
    model.set_attn_implementation("sdpa")
    prepare_model_for_packing(model)
    # 90 tokens: longer than the tiny Gemma's sliding window (64), so the band is applied.
    batch = features([9, 90, 23, 41])
    expected_loss, expected_grads = loss_and_grads(model, PadCollator(0)(batch))
    assert use_varlen_attention(model)
    assert model.config._attn_implementation == NAME
    collator = make_collator(
        0, packing=False, attn_implementation=NAME, padding_free=True, varlen=True
    )
    flat = collator(batch)
    assert flat["cu_seq_lens_q"].tolist() == [0, 9, 99, 122, 163]
    loss, grads = loss_and_grads(model, flat)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for name, grad in expected_grads.items():
        assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-6), name
    check_isolation(model, collator)
    restore_attention(model)
    assert model.config._attn_implementation == "sdpa"


def test_only_sdpa_is_switched_and_rows_without_boundaries_are_refused():
    model = build_tiny_model(VOCAB)
    model.set_attn_implementation("eager")
    assert not use_varlen_attention(model)
    assert model.config._attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    assert use_varlen_attention(model)
    padded = PadCollator(0)(features([5, 7]))
    with pytest.raises(RuntimeError, match="cu_seq_lens_q"):
        model(**padded)
