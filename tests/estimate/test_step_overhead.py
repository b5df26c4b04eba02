"""The per-step work a CPU does besides the matmuls (estimate/step_overhead.py), by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_memory import SETTINGS, SHAPE

from lmforge.estimate.devices import Device, card_device, cpu_memory_rates
from lmforge.estimate.step_overhead import step_overhead
from lmforge.estimate.timing import estimate_time

READ, FRESH = 1e9, 1e8  # bytes/s
CPU = Device("CPU", "cpu", 64 * 2**30, 1e11, 0.5, "test", READ, FRESH)


def test_lora_in_fp32_host_work_and_weights_streamed():
    got = step_overhead(SHAPE, SETTINGS, CPU)
    host = 4 * (3.0 + 1.0 * 7) / 1000  # gpus.yaml cpu_host_ms: 4 layers, 7 adapted linears
    weights = 990_000 * 4 + 10_000 * 4  # fp32, streamed forward and backward
    assert got.per_batch == pytest.approx(host + 2 * weights / READ)
    # 10,000 fp32 LoRA parameters: gradients made anew; AdamW: 8 B of states both ways,
    # parameter both ways, gradient read
    assert got.per_update == pytest.approx(10_000 * 4 / FRESH + 10_000 * (16 + 12) / READ)
    assert got.per_step(accumulation=3) == pytest.approx(3 * got.per_batch + got.per_update)


def test_full_fine_tuning_under_bf16_casts_every_weight_and_makes_the_tied_head_gradients():
    shape = replace(SHAPE, trainable_params=1_000_000, trained_layers=4)
    settings = replace(SETTINGS, finetuning_type="full", autocast_16bit=True, bf16=True)
    got = step_overhead(shape, settings, CPU)
    streamed = 2 * 1_000_000 * 4 + 1_000_000 * 4  # fp32 weights twice, read for each cast
    made = 1_000_000 * 2 + 2 * 1000 * 64 * 4  # the bf16 casts; head and embedding gradients
    assert got.per_batch == pytest.approx(4 * 3.0 / 1000 + streamed / READ + made / FRESH)
    assert got.per_update == pytest.approx(1_000_000 * 4 / FRESH + 1_000_000 * 28 / READ)


def test_a_gpu_or_an_unmeasured_cpu_adds_nothing():
    assert step_overhead(SHAPE, SETTINGS, card_device("H100")).per_step(4) == 0.0
    unmeasured = Device("CPU", "cpu", 64 * 2**30, 1e11, 0.5, "test")
    assert step_overhead(SHAPE, SETTINGS, unmeasured).per_step(1) == 0.0


def test_the_run_time_adds_the_overhead_of_every_step():
    run = {"steps": 10, "real_tokens": 1000, "positions": 1000}
    plain = estimate_time(1e12, run, peak_flops=1e11, mfu=0.5, devices=1)
    slower = estimate_time(1e12, run, peak_flops=1e11, mfu=0.5, devices=1, overhead_per_step=0.3)
    assert plain.seconds == pytest.approx(20.0) and slower.seconds == pytest.approx(23.0)
    assert slower.tokens_per_second == pytest.approx(1000 / 23.0)


def test_memory_rates_are_measured():
    read, fresh = cpu_memory_rates(size=2**24, repeats=1)
    assert read > 0 and fresh > 0
