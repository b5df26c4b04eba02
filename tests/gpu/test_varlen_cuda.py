"""GPU-only (skipped without CUDA; on a GPU machine: `python -m pytest tests/gpu`, which
benchmarks/gpu/run.sh runs). The variable-length kernels on CUDA: same losses as padded batches under sdpa, finite and
matching gradients, per-sample losses of a packed row equal to each sample alone, no host
synchronisation inside the model, and a real `lmforge train` naming the kernel it ran."""

import pytest
import torch
import torch.nn.functional as F

import conftest
from conftest import SHORT_SFT, build_tiny_decoder, build_tiny_model, random_features, run_train
from lmforge.data.encoding.collate import PadCollator, make_collator
from lmforge.model import varlen_attention as va
from lmforge.model import varlen_kernels
from lmforge.model.packing import check_isolation, prepare_model_for_packing

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tests/gpu)"),
]
VOCAB = 300
LENGTHS = [9, 150, 23, 97, 64]  # 150 and 97 > the tiny Gemma's sliding window of 64


def tiny_gemma():
    return build_tiny_model(VOCAB)


def tiny_llama_gqa():
    return build_tiny_decoder(
        "llama", VOCAB, num_attention_heads=4, num_key_value_heads=2, head_dim=64, hidden_size=256
    )


def tiny_qwen2_window():
    return build_tiny_decoder(
        "qwen2",
        VOCAB,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=256,
        use_sliding_window=True,
        sliding_window=48,
        max_window_layers=0,
    )


BUILDS = [tiny_gemma, tiny_llama_gqa, tiny_qwen2_window]
IDS = ["gemma3-window", "llama-gqa", "qwen2-window"]
HALF_KERNELS = [va.TORCH_VARLEN, va.FLEX_DOCUMENT] + (
    [va.FLASH_ATTN_VARLEN] if varlen_kernels.flash_attn_available() else []
)


def features(lengths=LENGTHS):
    return random_features(lengths, VOCAB)


def to_cuda(batch):
    return {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}


def flat_batch(lengths=LENGTHS):
    collator = make_collator(
        0, packing=False, attn_implementation="x", padding_free=True, varlen=True
    )
    return to_cuda(collator(features(lengths)))


def loss_and_grads(model, batch):
    loss, grads = conftest.loss_and_grads(model, batch)
    return loss, {name: grad.float() for name, grad in grads.items()}


def grad_norm(grads):
    return torch.sqrt(sum((g.float() ** 2).sum() for g in grads.values())).item()


# FlexAttention compiles per shape (seconds each): once here, the others on every model.
CASES = [(b, k) for b in BUILDS for k in HALF_KERNELS if k is not va.FLEX_DOCUMENT]
CASES.append((tiny_gemma, va.FLEX_DOCUMENT))


@pytest.mark.parametrize(
    "build, kernel", CASES, ids=lambda x: getattr(x, "__name__", None) or x.name
)
def test_bf16_loss_and_gradients_equal_padded_sdpa(build, kernel):
    model = build().cuda()
    model.set_attn_implementation("sdpa")
    prepare_model_for_packing(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        expected, expected_grads = loss_and_grads(model, to_cuda(PadCollator(0)(features())))
        assert va.use_varlen_attention(model, kernel)
        loss, grads = loss_and_grads(model, flat_batch())
    assert loss == pytest.approx(expected, rel=1e-2)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grad_norm(grads) == pytest.approx(grad_norm(expected_grads), rel=2e-2)
    for name, grad in expected_grads.items():
        cosine = F.cosine_similarity(grads[name].flatten(), grad.flatten(), dim=0).item()
        assert cosine > 0.99, (name, cosine)


@pytest.mark.parametrize("build", [tiny_gemma, tiny_llama_gqa], ids=IDS[:2])
def test_fp32_flex_equals_padded_sdpa(build):
    model = build().cuda()
    model.set_attn_implementation("sdpa")
    prepare_model_for_packing(model)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    expected, expected_grads = loss_and_grads(model, to_cuda(PadCollator(0)(features())))
    assert va.choose_kernel("auto", device_type="cuda", half_precision=False) == va.FLEX_DOCUMENT
    assert va.use_varlen_attention(model, va.FLEX_DOCUMENT)
    loss, grads = loss_and_grads(model, flat_batch())
    assert loss == pytest.approx(expected, rel=1e-4)
    for name, grad in expected_grads.items():
        assert torch.allclose(grads[name], grad, rtol=1e-3, atol=1e-5), name


@pytest.mark.parametrize(
    "kernel", [k for k in HALF_KERNELS if k is not va.FLEX_DOCUMENT], ids=lambda k: k.name
)
def test_packed_per_sample_losses_equal_each_sample_alone(kernel):
    model = tiny_gemma().cuda().eval()
    model.set_attn_implementation("sdpa")
    prepare_model_for_packing(model)
    samples = features()
    assert va.use_varlen_attention(model, kernel)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        batch = flat_batch()
        logits = (
            model(
                input_ids=batch["input_ids"],
                position_ids=batch["position_ids"],
                cu_seq_lens_q=batch["cu_seq_lens_q"],
                cu_seq_lens_k=batch["cu_seq_lens_k"],
                max_length_q=batch["max_length_q"],
                max_length_k=batch["max_length_k"],
            )
            .logits[0]
            .float()
        )
        start = 0
        for sample in samples:
            n = len(sample["input_ids"])
            alone = flat_batch([n]) | {"input_ids": torch.tensor([sample["input_ids"]]).cuda()}
            alone.pop("labels")
            single = model(**alone).logits[0].float()
            packed_loss = F.cross_entropy(logits[start : start + n - 1], alone["input_ids"][0, 1:])
            single_loss = F.cross_entropy(single[:-1], alone["input_ids"][0, 1:])
            assert packed_loss.item() == pytest.approx(single_loss.item(), rel=1e-2)
            start += n
    check_isolation(
        model,
        make_collator(0, packing=False, attn_implementation="x", padding_free=True, varlen=True),
        autocast_dtype=torch.bfloat16,
    )


@pytest.mark.parametrize("kernel", [va.TORCH_VARLEN], ids=lambda k: k.name)
def test_no_host_synchronisation_in_forward_and_backward(kernel):
    model = tiny_gemma().cuda()
    model.set_attn_implementation("sdpa")
    prepare_model_for_packing(model)
    assert va.use_varlen_attention(model, kernel)
    batch = flat_batch()
    batch.pop("labels")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(**batch).logits.float().sum().backward()  # warm-up: lazy initialisation may sync
        model.zero_grad()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(**batch).logits.float().sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)


def test_training_on_cuda_runs_the_varlen_kernel(tmp_path, tiny_model_dir, caplog):
    with caplog.at_level("INFO", logger="lmforge"):
        run = run_train(
            tmp_path,
            tiny_model_dir,
            SHORT_SFT,
            bf16=True,
            max_steps=3,
            per_device_train_batch_size=4,
            logging_steps=1,
        )
    assert "padding-free" in caplog.text
    expected = va.FLASH_ATTN_VARLEN if varlen_kernels.flash_attn_available() else va.TORCH_VARLEN
    assert f"attention: {expected.describe}" in caplog.text
    assert run.final_loss == run.final_loss and run.final_loss > 0  # finite, trained
    assert run.model.config._attn_implementation == "sdpa"  # the loaded attention restored
