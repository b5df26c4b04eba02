"""What `load_model` does to every model it loads, for training and inference alike."""

import torch

from lmforge.model.load import load_model


def test_the_output_head_gets_its_kept_positions_as_one_matrix(tiny_model_dir):
    """With logits_to_keep the model slices hidden[:, -k:], which keeps the whole sequence's
    batch stride; the head is handed a plain copy so that torch.matmul folds it into one
    matrix product (a batched product copies the whole head weight first for bf16 on a CPU).
    The logits are those of the full-sequence forward."""
    model = load_model(tiny_model_dir, dtype=torch.bfloat16)
    seen = []
    head = model.get_output_embeddings()
    head.register_forward_pre_hook(lambda _m, args: seen.append((args[0].shape, args[0].stride())))
    ids = torch.randint(0, model.config.vocab_size, (3, 11))
    with torch.no_grad():
        every = model(input_ids=ids).logits
        kept = model(input_ids=ids, logits_to_keep=2).logits
    hidden = model.config.hidden_size
    assert seen == [
        ((3, 11, hidden), (11 * hidden, hidden, 1)),
        ((3, 2, hidden), (2 * hidden, hidden, 1)),
    ]
    assert torch.equal(kept, every[:, -2:])
    with torch.no_grad():  # one sequence, one position: a size-1 batch with the sequence's stride
        model(input_ids=ids[:1], logits_to_keep=1)
    assert seen[-1] == ((1, 1, hidden), (hidden, hidden, 1))


def test_inference_dtype_auto_follows_native_bf16(monkeypatch):
    """`infer_dtype: auto` is bf16 wherever bf16 is computed natively (a bf16 CPU included:
    generation reads every weight per token, so half the bytes is about twice the speed), fp16
    on a GPU without bf16, fp32 on a CPU that would emulate bf16; a named dtype is kept."""
    from lmforge.model import load

    def on(bf16: bool, cuda: bool):
        monkeypatch.setattr("lmforge.device.cpu_supports_bf16", lambda: bf16 and not cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16 and cuda)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        return load.inference_dtype("auto")

    assert on(bf16=True, cuda=False) == torch.bfloat16
    assert on(bf16=False, cuda=False) == torch.float32
    assert on(bf16=True, cuda=True) == torch.bfloat16
    assert on(bf16=False, cuda=True) == torch.float16
    assert load.inference_dtype("float32") == torch.float32
    assert load.inference_dtype("float16") == torch.float16
