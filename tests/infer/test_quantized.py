"""`quantization_bit` for chat, API and evaluation (LLaMA-Factory's meaning): the base answers
in 4 or 8 bits (bitsandbytes, on the CPU too), and an adapter trained with QLoRA stays apart
from it instead of being merged into quantized weights."""

import pytest
import torch

from conftest import INFERENCE, SHORT_SFT, run_train, write_config
from lmforge import device
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.infer.engine import HFEngine

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def qlora_run(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qlora")
    bf16 = device.supports_bf16()
    return run_train(folder, tiny_model_dir, SHORT_SFT, quantization_bit=4, bf16=bf16)


def test_a_qlora_adapter_answers_on_the_quantized_base_as_it_trained(
    tmp_path, tiny_model_dir, qlora_run
):
    path = write_config(
        tmp_path,
        tiny_model_dir,
        INFERENCE,
        quantization_bit=4,
        adapter_name_or_path=str(qlora_run.output_dir),
        infer_dtype="bfloat16",  # the dtype the run trained the base's other weights in
        do_sample=False,
        max_new_tokens=5,
    )
    engine = HFEngine.from_config(load_config(path))
    try:
        model = engine.model
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        assert any("lora_A" in name for name, _ in model.named_parameters())  # not merged
        ids = torch.tensor([[2, 40, 73, 80, 5, 9]])
        # the trained model's forward still runs under the trainer's autocast (accelerate wraps
        # it), so the served one is run under the same
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=device.supports_bf16())
        with torch.no_grad(), autocast:
            served = model(input_ids=ids).logits
            trained = qlora_run.model.eval()(input_ids=ids).logits
        assert torch.equal(served.float(), trained.float())
        assert engine.generate([{"role": "user", "content": "Hi"}])
    finally:
        engine.close()


def test_two_adapters_on_a_quantized_base_are_one_paragraph(
    tmp_path, tiny_model_dir, qlora_run, capsys
):
    adapters = f"{qlora_run.output_dir},{qlora_run.output_dir}"
    path = write_config(tmp_path, tiny_model_dir, INFERENCE, adapter_name_or_path=adapters)
    code = main(["chat", str(path), "quantization_bit=4", "--prompt", "Hi"])
    assert code == 2
    err = capsys.readouterr().err
    assert "quantization_bit: 4 takes one adapter in adapter_name_or_path, and 2 are given" in err
    assert "Traceback" not in err


def test_quantization_bit_with_the_vllm_backend_is_one_paragraph(tmp_path, tiny_model_dir, capsys):
    path = write_config(tmp_path, tiny_model_dir, INFERENCE, infer_backend="vllm")
    assert main(["chat", str(path), "quantization_bit=4", "--prompt", "Hi"]) == 2
    assert capsys.readouterr().err == (
        "error: command line: quantization_bit: 4 loads the base with bitsandbytes, which is "
        "lmforge's own engine; infer_backend: vllm loads it itself. Fix: remove "
        "quantization_bit (vLLM serves the base in infer_dtype), or set infer_backend: "
        "huggingface.\n"
    )
