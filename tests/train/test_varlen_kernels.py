"""The variable-length attention kernels and their choice, on the CPU.

The CUDA kernels (torch's varlen_attn, flash-attn's flash_attn_varlen_func) cannot run here:
they are replaced by reference implementations of their documented contracts, which check the
arguments lmforge passes (layout, boundaries, window, GQA) and compute what the kernel computes.
FlexAttention runs for real (uncompiled on the CPU). tests/gpu/ runs the real kernels."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny_decoder, build_tiny_model, loss_and_grads, random_features
from lmforge.data.encoding.collate import PadCollator, make_collator
from lmforge.model import varlen_attention as va
from lmforge.model.packing import check_isolation, prepare_model_for_packing

VOCAB = 120
LENGTHS = [9, 90, 23, 41]  # 90 > the tiny Gemma's sliding window of 64


def tiny_llama_gqa():
    return build_tiny_decoder(
        "llama", VOCAB, num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa"
    )


def tiny_gemma():
    model = build_tiny_model(VOCAB)
    model.set_attn_implementation("sdpa")
    return model


MODELS = pytest.mark.parametrize("build", [tiny_gemma, tiny_llama_gqa], ids=["gemma3", "llama-gqa"])


def features(lengths=LENGTHS):
    return random_features(lengths, VOCAB)


def flat_batch():
    collator = make_collator(
        0, packing=False, attn_implementation="x", padding_free=True, varlen=True
    )
    return collator(features())


def reference_varlen(q, k, v, cu, max_len, *, scale, left_window, causal=True):
    """What a flash varlen kernel computes, from (tokens, heads, dim) inputs."""
    edges = cu.tolist()
    assert edges[0] == 0 and edges[-1] == q.shape[0]
    assert max_len == max(b - a for a, b in zip(edges, edges[1:]))
    groups = q.shape[1] // k.shape[1]
    out = []
    for a, b in zip(edges, edges[1:]):
        n = b - a
        qs, ks, vs = (t[a:b].transpose(0, 1).float() for t in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        distance = torch.arange(n)[:, None] - torch.arange(n)[None, :]
        mask = distance >= 0 if causal else torch.ones(n, n, dtype=torch.bool)
        if left_window >= 0:
            mask = mask & (distance <= left_window)
        out.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale))
    return torch.cat(out, dim=1).transpose(0, 1).to(q.dtype)


@pytest.fixture
def fake_torch_varlen(monkeypatch):
    """torch.nn.attention.varlen.varlen_attn's contract; records each call's arguments."""
    import torch.nn.attention.varlen as varlen

    calls = []

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), **kw):
        calls.append(
            dict(
                shape=tuple(q.shape),
                kv_heads=k.shape[1],
                dtype=q.dtype,
                cu=cu_q,
                max_q=max_q,
                window=window_size,
                kw=kw,
            )
        )
        assert cu_q is cu_k and cu_q.dtype == torch.int32 and isinstance(max_q, int)
        assert q.dtype == k.dtype == v.dtype and q.dtype in (torch.bfloat16, torch.float16)
        assert window_size[1] == 0  # causal
        return reference_varlen(q, k, v, cu_q, max_q, scale=scale, left_window=window_size[0])

    monkeypatch.setattr(varlen, "varlen_attn", varlen_attn)
    return calls


@MODELS
def test_torch_varlen_gives_the_padded_loss_under_bf16_autocast(build, fake_torch_varlen):
    model = build()
    prepare_model_for_packing(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = loss_and_grads(model, PadCollator(0)(features()))
        assert va.use_varlen_attention(model, va.TORCH_VARLEN)
        loss, grads = loss_and_grads(model, flat_batch())
    assert loss == pytest.approx(expected, rel=1e-2)
    assert all(torch.isfinite(g).all() for g in grads.values())
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    call = fake_torch_varlen[0]
    assert call["shape"] == (sum(LENGTHS), heads, model.config.head_dim)
    assert call["kv_heads"] == kv_heads  # grouped-query attention: no repeated heads
    assert call["dtype"] == torch.bfloat16 and call["max_q"] == 90
    windows = {c["window"] for c in fake_torch_varlen}
    if model.config.model_type == "gemma3_text":  # one sliding layer, one full layer
        assert windows == {(63, 0), (-1, 0)}
    else:
        assert windows == {(-1, 0)}


def test_no_host_synchronisation_inside_the_model(fake_torch_varlen, monkeypatch):
    """The boundaries arrive as a tensor and a Python int; nothing in the forward and backward
    pass turns a tensor into a Python value (on CUDA each would wait for the GPU)."""
    model = tiny_gemma()
    prepare_model_for_packing(model)
    assert va.use_varlen_attention(model, va.TORCH_VARLEN)
    batch = flat_batch()
    import torch.nn.attention.varlen as varlen

    inner = varlen.varlen_attn
    monkeypatch.setattr(varlen, "varlen_attn", lambda q, k, v, *a, **kw: torch.zeros_like(q) + q)
    synced = []
    for method in ("tolist", "item", "__bool__", "__int__", "__index__"):
        original = getattr(torch.Tensor, method)

        def spy(self, *args, _name=method, _original=original, **kwargs):
            synced.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(**batch).logits.sum().backward()
    monkeypatch.undo()
    assert synced == []
    assert inner is not None


@MODELS
def test_flex_document_mask_gives_the_padded_logits(build):
    """Forward only: FlexAttention has no backward pass on the CPU (tests/gpu trains with it)."""
    model = build().eval()
    prepare_model_for_packing(model)
    padded = PadCollator(0)(features())
    with torch.no_grad():
        expected = model(**padded).logits
        assert va.use_varlen_attention(model, va.FLEX_DOCUMENT)
        flat = model(**flat_batch()).logits[0]
    mask = padded["attention_mask"].bool()
    assert torch.allclose(flat, expected[mask], rtol=1e-4, atol=1e-5)
    check_isolation(
        model,
        make_collator(0, packing=False, attn_implementation="x", padding_free=True, varlen=True),
    )
    va.restore_attention(model)
    assert model.config._attn_implementation == "sdpa"


def test_flash_attn_package_gets_its_varlen_arguments(monkeypatch):
    calls = []

    def flash_attn_varlen_func(
        q,
        k,
        v,
        *,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p,
        softmax_scale,
        causal,
        window_size,
        softcap,
    ):
        calls.append((window_size, causal, softcap, k.shape[1]))
        assert cu_seqlens_q is cu_seqlens_k and isinstance(max_seqlen_q, int)
        return reference_varlen(
            q, k, v, cu_seqlens_q, max_seqlen_q, scale=softmax_scale, left_window=window_size[0]
        )

    monkeypatch.setitem(
        sys.modules,
        "flash_attn",
        types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func),
    )
    model = tiny_gemma()
    prepare_model_for_packing(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = loss_and_grads(model, PadCollator(0)(features()))
        assert va.use_varlen_attention(model, va.FLASH_ATTN_VARLEN)
        loss, _ = loss_and_grads(model, flat_batch())
    assert loss == pytest.approx(expected, rel=1e-2)
    assert {c[0] for c in calls} == {(63, 0), (-1, 0)}
    assert all(causal and softcap == 0.0 and kv == 1 for _, causal, softcap, kv in calls)


def test_half_precision_kernels_refuse_fp32_without_autocast(fake_torch_varlen):
    model = tiny_gemma()
    prepare_model_for_packing(model)
    va.use_varlen_attention(model, va.TORCH_VARLEN)
    with pytest.raises(RuntimeError, match="FlexAttention for fp32"):
        model(**flat_batch())


@pytest.mark.parametrize(
    "flash_attn, device, half, softcap, dropout, fa_installed, torch_varlen, expected",
    [
        ("auto", "cpu", False, False, False, False, True, va.PER_SAMPLE_SDPA),
        ("sdpa", "cpu", True, False, False, True, True, va.PER_SAMPLE_SDPA),
        ("auto", "cpu", False, True, False, False, True, None),  # eager's masks
        ("disabled", "cuda", True, False, False, True, True, None),
        ("auto", "cuda", True, False, False, False, True, va.TORCH_VARLEN),
        ("sdpa", "cuda", True, False, False, True, True, va.TORCH_VARLEN),
        ("auto", "cuda", True, False, False, True, True, va.FLASH_ATTN_VARLEN),
        ("fa2", "cuda", True, True, True, True, True, va.FLASH_ATTN_VARLEN),
        ("auto", "cuda", False, False, False, True, True, va.FLEX_DOCUMENT),  # fp32 training
        ("auto", "cuda", True, True, False, False, True, va.FLEX_DOCUMENT),  # softcapping
        ("auto", "cuda", True, False, False, False, False, va.FLEX_DOCUMENT),  # old torch
        ("auto", "cuda", True, False, True, False, True, va.PER_SAMPLE_SDPA),  # dropout
    ],
)
def test_kernel_choice(
    flash_attn, device, half, softcap, dropout, fa_installed, torch_varlen, expected
):
    chosen = va.choose_kernel(
        flash_attn,
        device_type=device,
        half_precision=half,
        softcap=softcap,
        dropout=dropout,
        flash_attn_installed=fa_installed,
        torch_varlen_installed=torch_varlen,
    )
    assert chosen == expected


def test_eager_models_keep_their_masks():
    model = tiny_gemma()
    model.set_attn_implementation("eager")
    assert not va.use_varlen_attention(model, va.PER_SAMPLE_SDPA)
    assert model.config._attn_implementation == "eager"


@MODELS
def test_per_sample_sdpa_gives_the_padded_loss_and_gradients(build):
    """The CPU kernel, in fp32: the padded batch's loss and gradients to rounding."""
    model = build()
    prepare_model_for_packing(model)
    expected_loss, expected_grads = loss_and_grads(model, PadCollator(0)(features()))
    assert va.use_varlen_attention(model, va.PER_SAMPLE_SDPA)
    assert model.config._attn_implementation == va.NAME
    collator = make_collator(
        0, packing=False, attn_implementation=va.NAME, padding_free=True, varlen=True
    )
    flat = collator(features())
    assert flat["cu_seq_lens_q"].tolist() == [0, 9, 99, 122, 163]
    assert flat["max_length_q"] == 90  # computed once per batch, on the host
    loss, grads = loss_and_grads(model, flat)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for name, grad in expected_grads.items():
        assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-6), name
    check_isolation(model, collator)
    va.restore_attention(model)
    assert model.config._attn_implementation == "sdpa"


def test_rows_without_boundaries_are_refused():
    model = tiny_gemma()
    assert va.use_varlen_attention(model, va.PER_SAMPLE_SDPA)
    with pytest.raises(RuntimeError, match="cu_seq_lens_q"):
        model(**PadCollator(0)(features([5, 7])))
