"""`lmforge estimate` end to end on a tiny model folder, advice, and the check before training."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import write_config
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.estimate import estimate_run
from lmforge.estimate.advice import advise
from lmforge.estimate.core import compute
from lmforge.estimate.devices import GIB, Device, card_device, cards


def _estimate(capsys, *argv):
    code = main(["estimate", *argv])
    return code, capsys.readouterr()


def test_json_keys(tmp_path, tiny_model_dir, capsys):
    path = write_config(tmp_path, tiny_model_dir)
    code, out = _estimate(capsys, str(path), "--gpu", "4090", "--json", "lora_rank=4")
    assert code == 0
    data = json.loads(out.out)
    assert {"total_bytes", "device_bytes", "fits", "terms", "time", "advice"} <= set(data)
    assert data["fits"] is True and data["device_bytes"] == int(24 * GIB)
    assert data["total_bytes"] == sum(
        v for k, v in data["terms"].items() if k not in data["peak_group"]
    ) + max(
        data["terms"]["activations"] + data["terms"]["loss buffers"],
        data["terms"]["gradients"] + data["terms"]["optimizer step"],
    )
    assert "gradients" in data["peak_group"]  # no accumulation: gradients only from backward
    assert data["time"]["real_tokens"] > 0 and data["time"]["seconds"] > 0


def test_text_report_on_this_machine(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setattr("lmforge.estimate.devices.cpu_matmul_peak", lambda **_: 100e9)
    path = write_config(tmp_path, tiny_model_dir)
    code, out = _estimate(capsys, str(path), "--finetuning_type", "full")
    assert code == 0
    for word in ("Peak memory per device", "weights", "optimizer states", "activations", "Time"):
        assert word in out.out
    assert "Room to spare" in out.out  # a tiny model: far below the limit


@pytest.mark.parametrize("bf16", [True, False])
def test_a_bf16_run_on_a_bf16_cpu_is_timed_at_the_bf16_peak(
    tmp_path, tiny_model_dir, capsys, monkeypatch, bf16
):
    """On a CPU with native bf16 a bf16 run computes at the bf16 matmul peak, of which lmforge
    reaches its own share (gpus.yaml cpu_bf16); fp32 runs at the fp32 peak. The tiny model's
    fp32 checkpoint loaded in bf16 is a loading phase of its own."""
    import torch

    def peak(seconds=0.6, dtype=None):
        return 200e9 if dtype == torch.bfloat16 else 100e9

    monkeypatch.setattr("lmforge.estimate.devices.cpu_matmul_peak", peak)
    monkeypatch.setattr("lmforge.estimate.devices.cpu_memory_rates", lambda: (30e9, 5e9))
    monkeypatch.setattr("lmforge.device.supports_bf16", lambda: True)
    path = write_config(tmp_path, tiny_model_dir)
    code, out = _estimate(capsys, str(path), f"bf16={str(bf16).lower()}")
    assert code == 0
    assert " s a step outside the matmuls (host work, weights through memory) -> " in out.out
    if bf16:
        assert "at MFU 48% of 0.2 TFLOP/s (bf16 matmul peak measured now" in out.out
        assert "loading (CPU)" in out.out
    else:
        assert "at MFU 56% of 0.1 TFLOP/s (fp32 matmul peak measured now" in out.out
        assert "loading (CPU)" not in out.out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--gpu", "GTX 9999"], "not a card lmforge knows"),
        (["--gpus", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_paragraph_and_exit_2(tmp_path, tiny_model_dir, capsys, argv, words):
    path = write_config(tmp_path, tiny_model_dir)
    code, out = _estimate(capsys, str(path), *argv)
    assert code == 2
    assert out.err.startswith("error: ") and words in out.err and "Fix:" in out.err
    assert out.err.count("\n") == 1


def test_model_without_config_json(tmp_path, tiny_model_dir, capsys):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "config.json").unlink()
    path = write_config(tmp_path, folder)
    code, out = _estimate(capsys, str(path))
    assert code == 2 and "config.json" in out.err


def _result(tmp_path, tiny_model_dir, device, **settings):
    from lmforge.config.resolve import resolve_for_training
    from lmforge.model.setup import prepare_model_setup
    from lmforge.train.stages import get_stage

    config = load_config(write_config(tmp_path, tiny_model_dir, **settings))
    plan = resolve_for_training(config, bf16_supported=True, cuda=True, check_output_dir=False)
    setup = prepare_model_setup(config)
    data = get_stage("sft").datasets(config, setup)
    return estimate_run(config, plan, setup.resolved.path, data.train, device)


def test_advice_brings_the_estimate_under_the_limit(tmp_path, tiny_model_dir):
    roomy = Device("roomy", "cuda", 64 * GIB, 1e14, 0.4, "test")
    result, shape_for = _result(
        tmp_path, tiny_model_dir, roomy, finetuning_type="full", per_device_train_batch_size=8
    )
    # A card just below this run's need: the activations must shrink for it to fit.
    limit = result.total - result.memory.terms["activations"] // 2
    small = Device("small", "cuda", limit, 1e14, 0.4, "test")
    tight = compute(shape_for, result.settings, result.lengths, small)
    assert not tight.fits
    advice = advise(tight, shape_for)
    assert advice and all(a.result.fits for a in advice)
    assert all(a.result.total <= limit for a in advice)


def test_a_run_too_large_for_every_card_says_so(tmp_path, tiny_model_dir, capsys):
    from lmforge.estimate import core

    path = write_config(tmp_path, tiny_model_dir)
    huge = 10**15  # a quadrillion bytes: no card holds it
    original = core.estimate_memory

    def inflated(*args, **kwargs):
        est = original(*args, **kwargs)
        est.terms["weights"] += huge
        return est

    core.estimate_memory = inflated
    try:
        code, out = _estimate(capsys, str(path), "--gpu", "H200")
    finally:
        core.estimate_memory = original
    assert code == 1
    assert "does not fit" in out.out and "fits on none of the cards" in out.out


def test_cards_are_complete():
    names = {card["name"] for card in cards()}
    for wanted in (
        "RTX 3090",
        "RTX 4090",
        "A10",
        "A100 40GB",
        "A100 80GB",
        "H100",
        "H200",
        "L40S",
        "Hygon K100-AI",
    ):
        assert wanted in names
    assert card_device("a100").memory_bytes == int(80 * GIB)


def test_train_prints_the_line_and_stops_when_far_over(
    tmp_path, tiny_model_dir, monkeypatch, caplog
):
    from lmforge.errors import UserError
    from lmforge.train.run import run_training

    monkeypatch.setattr("lmforge.estimate.check.free_memory", lambda kind: 1024)
    config = load_config(write_config(tmp_path, tiny_model_dir, max_steps=1))
    with pytest.raises(UserError, match="run out of memory") as error:
        run_training(config)
    assert "skip_memory_check" in str(error.value)
    assert not (tmp_path / "out").exists()  # stopped before anything was written
    config = load_config(
        write_config(tmp_path, tiny_model_dir, max_steps=1, skip_memory_check=True)
    )
    with caplog.at_level("INFO", logger="lmforge"):
        run_training(config)
    assert any("memory: estimated peak" in r.getMessage() for r in caplog.records)


def test_a_stop_for_the_loading_peak_says_it_is_loading(tmp_path, tiny_model_dir, monkeypatch):
    """When converting the checkpoint as it loads is the run's peak (estimate.memory
    loading_bytes), the stop names that phase, not training's terms, which sum to less."""
    from lmforge.errors import UserError
    from lmforge.estimate import check
    from lmforge.train.run import run_training

    real = check.estimate_run

    def loading_peak(*args, **kwargs):
        result, shape_for = real(*args, **kwargs)
        result.memory.loading = 5 * GIB
        result.memory.loading_detail = "framework + weights + the checkpoint's pages"
        return result, shape_for

    monkeypatch.setattr(check, "estimate_run", loading_peak)
    monkeypatch.setattr(check, "free_memory", lambda kind: 2 * GIB)
    config = load_config(write_config(tmp_path, tiny_model_dir, max_steps=1))
    expected = (
        r"needs about 5\.00 GiB per device at its peak \(while loading: framework \+ weights "
        r"\+ the checkpoint's pages; training's own 0\.\d\d GiB\)"
    )
    with pytest.raises(UserError, match=expected):
        run_training(config)


def test_settings_follow_the_config(tmp_path, tiny_model_dir):
    roomy = Device("roomy", "cuda", 64 * GIB, 1e14, 0.4, "test")
    result, _ = _result(
        tmp_path, tiny_model_dir, roomy, gradient_checkpointing=True, packing=True, optim="sgd"
    )
    s = result.settings
    assert s.gradient_checkpointing and s.packing and s.optim == "sgd"
    assert result.memory.terms["optimizer states"] == 0
    assert replace(s, batch_size=1).batch_size == 1


@pytest.mark.parametrize(
    "finetuning_type, frozen", [("lora", True), ("freeze", True), ("full", False)]
)
def test_frozen_bf16_follows_the_plan_and_the_method(
    tmp_path, tiny_model_dir, finetuning_type, frozen
):
    """bf16 mixed precision with LoRA or freeze: the frozen weights are bf16 (the plan's
    Precision.frozen_bf16, or derived from the config as config/resolve.py does without one);
    advice that switches a full run to LoRA switches them too."""
    from lmforge.estimate.advice import candidates
    from lmforge.estimate.settings import settings_from_config

    roomy = Device("roomy", "cuda", 64 * GIB, 1e14, 0.4, "test")
    result, _ = _result(tmp_path, tiny_model_dir, roomy, bf16=True, finetuning_type=finetuning_type)
    s = result.settings
    assert s.bf16 and s.frozen_bf16 == frozen and s.frozen_weights_bf16 == frozen
    assert s.weight_bytes == (2 if frozen else 4)
    config = load_config(tmp_path / "train.yaml")
    assert settings_from_config(config, device_kind="cuda") == s  # without a plan
    if finetuning_type == "full":
        lora = next(new for change, _, new in candidates(s, "cuda") if change.endswith("lora"))
        assert lora.frozen_bf16 and lora.frozen_weights_bf16
        fp16 = replace(s, bf16=False)
        lora = next(new for change, _, new in candidates(fp16, "cuda") if change.endswith("lora"))
        assert not lora.frozen_bf16


def test_qlora_is_advised_on_the_cpu_only_where_bf16_runs(tmp_path, tiny_model_dir):
    """QLoRA runs on the CPU (bitsandbytes >= 0.47.0) and computes in bf16: advised there with
    native bf16 asked for, never to a run in fp32 on the CPU; always on CUDA."""
    from lmforge.estimate.advice import candidates

    roomy = Device("roomy", "cuda", 64 * GIB, 1e14, 0.4, "test")
    result, _ = _result(tmp_path, tiny_model_dir, roomy, bf16=True)
    s = result.settings

    def qlora(settings, kind):
        found = [c for c in candidates(settings, kind) if c[0] == "quantization_bit: 4"]
        return found[0] if found else None

    change, why, new = qlora(s, "cpu")
    assert why == (
        "QLoRA: the frozen linear weights in 4 bits (needs bitsandbytes; about 10 % slower on "
        "the CPU)"
    )
    assert new.quantization_bit == 4 and new.frozen_weights_bf16
    assert qlora(replace(s, bf16=False, autocast_16bit=False), "cpu") is None
    assert qlora(replace(s, bf16=False, autocast_16bit=False), "cuda") is not None
    assert qlora(replace(s, quantization_bit=4), "cuda") is None  # already QLoRA


def test_train_turns_gradient_checkpointing_on_where_only_that_fits(
    tmp_path, tiny_model_dir, monkeypatch, caplog
):
    """LLaMA-Factory checkpoints always; lmforge when the run would not fit without it and
    the user left it unset. Given (gradient_checkpointing: false, or LLaMA-Factory's
    disable_gradient_checkpointing: true), it stays off."""
    import yaml

    from lmforge.config.resolve import resolve_for_training
    from lmforge.estimate import estimate_run
    from lmforge.estimate.devices import Device
    from lmforge.model.setup import prepare_model_setup
    from lmforge.train.run import run_training
    from lmforge.train.stages import get_stage

    settings = dict(max_steps=1, cutoff_len=256, per_device_train_batch_size=8)
    config = load_config(write_config(tmp_path, tiny_model_dir, **settings))
    plan = resolve_for_training(config, bf16_supported=False, cuda=False, check_output_dir=False)
    assert (plan.checkpointing.on, plan.checkpointing.auto) == (False, True)
    setup = prepare_model_setup(config, training=True)
    data = get_stage("sft").datasets(config, setup)
    device = Device("d", "cpu", 64 * GIB, 0.0, 0.0, "")
    off, _ = estimate_run(config, plan, setup.resolved.path, data.train, device)
    on, _ = estimate_run(
        config, plan.with_checkpointing(""), setup.resolved.path, data.train, device
    )
    assert on.total < off.total
    free = (on.total + off.total) // 2
    monkeypatch.setattr("lmforge.estimate.check.free_memory", lambda kind: free)

    with caplog.at_level("INFO", logger="lmforge"):
        run = run_training(config)
    assert "note: gradient checkpointing on: without it this run needs about" in caplog.text
    assert run.model.base_model.model.is_gradient_checkpointing
    written = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
    assert written["gradient_checkpointing"] is True

    for given in ({"gradient_checkpointing": False}, {"disable_gradient_checkpointing": True}):
        folder = tmp_path / next(iter(given))
        config = load_config(write_config(folder, tiny_model_dir, **settings, **given))
        run = run_training(config)  # over the free memory, under the stop's margin
        written = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
        assert written["gradient_checkpointing"] is False
    config = load_config(
        write_config(tmp_path / "lf", tiny_model_dir, disable_gradient_checkpointing=False)
    )
    plan = resolve_for_training(config, bf16_supported=False, cuda=False, check_output_dir=False)
    assert (plan.checkpointing.on, plan.checkpointing.auto) == (True, False)


def test_estimate_says_train_turns_gradient_checkpointing_on(tmp_path, tiny_model_dir, monkeypatch):
    from lmforge.commands.estimate import estimate_config
    from lmforge.config.resolve import resolve_for_training
    from lmforge.estimate import estimate_run
    from lmforge.estimate.devices import Device
    from lmforge.model.setup import prepare_model_setup
    from lmforge.train.stages import get_stage

    settings = dict(max_steps=1, cutoff_len=256, per_device_train_batch_size=8)
    config = load_config(write_config(tmp_path, tiny_model_dir, **settings))
    plan = resolve_for_training(config, bf16_supported=True, cuda=False, check_output_dir=False)
    setup = prepare_model_setup(config, training=True)
    rows = get_stage("sft").datasets(config, setup).train
    big = Device("d", "cpu", 64 * GIB, 0.0, 0.0, "")
    off = estimate_run(config, plan, setup.resolved.path, rows, big)[0].total
    on = estimate_run(config, plan.with_checkpointing(""), setup.resolved.path, rows, big)[0].total
    small = Device("d", "cpu", (on + off) // 2, 0.0, 0.0, "")
    monkeypatch.setattr("lmforge.estimate.devices.this_device", lambda **kw: small)
    result = estimate_config(config)[0]
    assert result.fits and result.settings.gradient_checkpointing
    assert any("`lmforge train` turns it on" in note for note in result.memory.notes)
    given = load_config(
        write_config(tmp_path / "off", tiny_model_dir, **settings, gradient_checkpointing=False)
    )
    assert not estimate_config(given)[0].fits


def test_asft_counts_its_reference_model_and_its_forward_pass(tmp_path, tiny_model_dir):
    # ASFT runs every batch through a reference too: with full tuning a frozen copy in memory,
    # and with any method one more forward pass: 2 FLOPs per weight and position, attention's
    # forward, and the reference's head at each trained position (the chunked loss)
    roomy = Device("roomy", "cuda", 64 * GIB, 1e14, 0.4, "test")
    plain, shape_for = _result(tmp_path / "dft", tiny_model_dir, roomy, use_dft_loss=True)
    asft, _ = _result(tmp_path / "asft", tiny_model_dir, roomy, use_asft_loss=True)
    assert asft.settings.reference_forward and not plain.settings.reference_forward
    assert "reference model" not in asft.memory.terms  # LoRA: the base, adapters disabled
    shape = shape_for(asft.settings)
    run = asft.time.real_tokens
    extra = asft.time.total_flops - plain.time.total_flops
    assert extra > 2 * shape.linear_params * run  # the reference's linear layers, at least
    assert extra < 2 * (shape.linear_params + shape.hidden * shape.vocab) * run * 1.5
    full, _ = _result(
        tmp_path / "full", tiny_model_dir, roomy, use_asft_loss=True, finetuning_type="full"
    )
    assert full.memory.terms["reference model"] > 0


def test_a_quantized_ref_model_is_counted_at_its_bits(tmp_path, tiny_model_dir):
    roomy = Device("roomy", "cuda", 64 * GIB, 1e14, 0.4, "test")
    # (ASFT: an sft run with a reference, so the estimate reads the sft toy data)
    common = {"use_asft_loss": True, "ref_model": str(tiny_model_dir), "bf16": True}
    whole, shape_for = _result(tmp_path / "whole", tiny_model_dir, roomy, **common)
    four, _ = _result(
        tmp_path / "four", tiny_model_dir, roomy, ref_model_quantization_bit=4, **common
    )
    shape = shape_for(whole.settings)
    assert whole.memory.terms["reference model"] == shape.total_params * 2  # bf16
    rest = shape.total_params - shape.linear_params
    nf4 = (
        4 + 8 / 64 + 32 / (64 * 256)
    )  # bits per weight: 8-bit scales per 64, fp32 per 256 of those
    assert four.memory.terms["reference model"] == int(shape.linear_params * nf4 / 8) + rest * 2
    assert "ref_model (4-bit linear layers)" in four.memory.details["reference model"]
