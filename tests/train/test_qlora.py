"""QLoRA (`quantization_bit: 4|8`) on the CPU: bitsandbytes >= 0.47.0 quantizes and computes there
too, so the path a GPU runs (4-bit base, fp32 LoRA weights, bf16 compute, peft's input casts
left to autocast) is trained and checked here."""

import json
import math
import sys

import pytest
import torch
import yaml

from conftest import SHORT_SFT, run_stage, run_train
from lmforge import device
from lmforge.cli import main
from lmforge.model.adapters import parameter_counts
from lmforge.model.dequantize import save_dequantized
from lmforge.model.load import Quantization, load_model

bnb = pytest.importorskip("bitsandbytes")


def losses(run) -> list[float]:
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def linear_layers(model, kind: str):
    """bitsandbytes' layers of class `kind` (not peft's LoRA wrappers of the same name)."""
    return [m for m in model.modules() if isinstance(m, getattr(bnb.nn, kind))]


@pytest.mark.parametrize("bits, kind", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_qlora_trains_on_the_cpu_as_lora_does_on_its_dequantized_base(
    tmp_path, tiny_model_dir, bits, kind
):
    bf16 = device.supports_bf16()
    quantization = Quantization(bits=bits, compute_dtype=torch.bfloat16 if bf16 else torch.float32)
    base = save_dequantized(tiny_model_dir, tmp_path / "dequantized", quantization)
    plain = run_train(tmp_path / "plain", base, SHORT_SFT, bf16=bf16)
    run = run_train(tmp_path / "q", tiny_model_dir, SHORT_SFT, bf16=bf16, quantization_bit=bits)
    # Every linear layer of the decoder is quantized (7 a layer, 2 layers); the head is not.
    assert len(linear_layers(run.model, kind)) == 14
    trained = {n: p for n, p in run.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert {p.dtype for p in trained.values()} == {torch.float32}
    frozen = {p.dtype for p in run.model.parameters() if not p.requires_grad}
    other = torch.bfloat16 if bf16 else torch.float32  # fp32 where bf16 is not native
    assert frozen == {other, torch.uint8 if bits == 4 else torch.int8}
    compute = {m.compute_dtype for m in linear_layers(run.model, kind) if bits == 4}
    assert compute <= {other}
    plan = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
    storage = "4-bit NF4" if bits == 4 else "8-bit"
    mixed, kept = ("bf16 mixed", "bf16") if bf16 else ("fp32", "fp32")
    assert plan["precision"] == (
        f"{mixed} (frozen linear weights {storage}, other frozen weights {kept}, "
        "trained weights fp32)"
    )
    # The same losses, step by step, within bf16 rounding (the original base's differ by the
    # quantization error: 5 % on this tiny model's first step).
    q, p = losses(run), losses(plain)
    assert all(abs(a - b) <= 1e-2 * abs(b) for a, b in zip(q, p, strict=True)), (q, p)
    assert q[-1] < q[0] - 0.5, q
    assert (run.output_dir / "adapter_model.safetensors").is_file()
    assert not (run.output_dir / "model.safetensors").exists()


def test_fp4_without_double_quantization_as_llamafactory_files_ask(tmp_path, tiny_model_dir):
    """`quantization_type: fp4` and `double_quantization: false` (keys of LLaMA-Factory's QLoRA
    examples) reach bitsandbytes, and the run trains as LoRA on its own dequantized base."""
    bf16 = device.supports_bf16()
    asked = {"quantization_bit": 4, "quantization_type": "fp4", "double_quantization": False}
    quantization = Quantization(
        bits=4,
        kind="fp4",
        double=False,
        compute_dtype=torch.bfloat16 if bf16 else torch.float32,
    )
    base = save_dequantized(tiny_model_dir, tmp_path / "dequantized", quantization)
    plain = run_train(tmp_path / "plain", base, SHORT_SFT, bf16=bf16)
    run = run_train(tmp_path / "q", tiny_model_dir, SHORT_SFT, bf16=bf16, **asked)
    states = [m.weight.quant_state for m in linear_layers(run.model, "Linear4bit")]
    assert {s.quant_type for s in states} == {"fp4"} and not any(s.nested for s in states)
    plan = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
    assert "frozen linear weights 4-bit FP4" in plan["precision"]
    q, p = losses(run), losses(plain)
    assert all(abs(a - b) <= 1e-2 * abs(b) for a, b in zip(q, p, strict=True)), (q, p)


def test_the_plan_counts_the_base_weights_that_4_bit_packs_two_to_a_byte(
    tmp_path, tiny_model_dir, caplog
):
    full = sum(p.numel() for p in load_model(tiny_model_dir).parameters())
    with caplog.at_level("INFO", logger="lmforge"):
        run = run_train(tmp_path, tiny_model_dir, SHORT_SFT, max_steps=1, quantization_bit=4)
    trainable, total = parameter_counts(run.model)
    assert total == full + trainable
    assert f"trainable params: {trainable:,} || all params: {total:,} ||" in caplog.text
    assert "method: sft / lora (r=8, alpha=16, target=all; QLoRA, 4-bit base)" in caplog.text


def test_an_eval_forward_leaves_the_gradients_of_the_next_training_step_alone(tiny_model_dir):
    """bitsandbytes repacks a 4-bit weight for its CPU kernel on the first eval-mode forward
    without gradients (as the packing check and evaluations run), and gradients through a
    repacked weight come out wrong; load_model keeps the loaded layout."""
    from peft import LoraConfig, get_peft_model

    ids = torch.tensor([[5, 9, 14, 3, 7, 11, 2, 8]])

    def lora_gradients(eval_first: bool) -> dict[str, torch.Tensor]:
        model = load_model(tiny_model_dir, dtype=torch.bfloat16, quantization=Quantization(bits=4))
        torch.manual_seed(0)
        config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(model, config)
        if eval_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
            model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    fresh, after_eval = lora_gradients(False), lora_gradients(True)
    assert fresh.keys() == after_eval.keys()
    for name in fresh:
        assert torch.equal(fresh[name], after_eval[name]), name


def test_without_bitsandbytes_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    path = tmp_path / "t.yaml"
    path.write_text("model_name_or_path: /nowhere\ndataset: x\noutput_dir: out\n")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    assert main(["train", str(path), "quantization_bit=4"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: quantization_bit needs the bitsandbytes package. "
        "Fix: pip install 'lmforge[bitsandbytes]'.\n"
    )


def test_an_old_bitsandbytes_is_named_with_the_version_needed(tmp_path, monkeypatch, capsys):
    path = tmp_path / "t.yaml"
    path.write_text("model_name_or_path: /nowhere\ndataset: x\noutput_dir: out\n")
    monkeypatch.setattr(bnb, "__version__", "0.46.1")
    assert main(["train", str(path), "quantization_bit=4"]) == 2
    assert capsys.readouterr().err == (
        "error: quantization_bit needs bitsandbytes >= 0.47.0, and 0.46.1 is installed. "
        "Fix: pip install -U 'lmforge[bitsandbytes]'.\n"
    )


def test_a_qlora_run_resumes_exactly(tmp_path, tiny_model_dir):
    settings = {**SHORT_SFT, "max_steps": 4, "save_steps": 2, "quantization_bit": 4}
    whole = run_train(tmp_path / "whole", tiny_model_dir, settings, bf16=device.supports_bf16())
    resumed = run_train(
        tmp_path / "resumed",
        tiny_model_dir,
        settings,
        bf16=device.supports_bf16(),
        resume_from_checkpoint=str(whole.output_dir / "checkpoint-2"),
    )
    assert losses(resumed) == losses(whole)[2:]
    for name, param in resumed.model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, dict(whole.model.named_parameters())[name]), name


@pytest.mark.parametrize("stage", ["rm", "dpo", "kto", "grpo"])
def test_each_stage_trains_qlora(tmp_path, tiny_model_dir, stage):
    """The reference of dpo/kto/grpo is the quantized base with the adapters off, so DPO's first
    loss is exactly log 2; rm's value head trains in fp32 beside the quantized base."""
    run = run_stage(
        tmp_path, tiny_model_dir, stage, quantization_bit=4, bf16=device.supports_bf16()
    )
    frozen = {p.dtype for p in run.model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16 if device.supports_bf16() else torch.float32, torch.uint8}
    assert {p.dtype for p in run.model.parameters() if p.requires_grad} == {torch.float32}
    if stage == "dpo":
        assert losses(run)[0] == pytest.approx(math.log(2), abs=1e-6)


def test_a_base_to_be_sharded_stores_its_4_bit_weights_as_bf16(tiny_model_dir):
    """ZeRO-3 and FSDP flatten and split the weights: the packed 4-bit values are stored in
    bf16, the dtype of the rest (as LLaMA-Factory does for fsdp+qlora); the model computes the
    same and counts the same number of weights."""
    ids = torch.tensor([[5, 9, 14, 3, 7, 11, 2, 8]])
    models = [
        load_model(
            tiny_model_dir,
            dtype=torch.bfloat16,
            quantization=Quantization(bits=4, sharded=sharded),
        )
        for sharded in (False, True)
    ]
    stored = [{m.weight.dtype for m in linear_layers(x, "Linear4bit")} for x in models]
    assert stored == [{torch.uint8}, {torch.bfloat16}]
    assert parameter_counts(models[0]) == parameter_counts(models[1])
    with torch.no_grad():
        logits = [x(input_ids=ids).logits for x in models]
    assert torch.equal(logits[0], logits[1])


def test_an_8_bit_base_is_not_sharded(tmp_path, monkeypatch):
    """Checked where the distributed settings are (on a GPU machine, before the model loads)."""
    from lmforge.config import load_config
    from lmforge.errors import UserError
    from lmforge.train.run import check_distributed_settings

    (tmp_path / "ds_z3.json").write_text('{"zero_optimization": {"stage": 3}}')
    path = tmp_path / "t.yaml"
    path.write_text("model_name_or_path: m\ndataset: x\noutput_dir: out\nquantization_bit: 8\n")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    for extra in ([f"deepspeed={tmp_path / 'ds_z3.json'}"], ["fsdp=full_shard"]):
        with pytest.raises(UserError) as info:
            check_distributed_settings(load_config(path, extra))
        assert info.value.format() == (
            f"{path}: quantization_bit: 8 cannot be sharded by DeepSpeed ZeRO-3 or FSDP: only a "
            "4-bit base is stored in a dtype they can split. Fix: use quantization_bit: 4, or "
            "ZeRO-2 (or no sharding) with 8 bits."
        )
