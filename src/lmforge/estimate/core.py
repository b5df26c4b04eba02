"""One estimate: a model shape, the run's settings, the data's lengths and a device -> memory,
time and a verdict. Advice (advice.py) calls `compute` again with changed settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmforge.estimate.batches import Batch, Lengths, largest_batch, run_tokens
from lmforge.estimate.devices import Device
from lmforge.estimate.memory import Estimate, estimate_memory, uses_chunked_loss
from lmforge.estimate.model_shape import ModelShape
from lmforge.estimate.settings import Settings
from lmforge.estimate.step_overhead import step_overhead
from lmforge.estimate.timing import TimeEstimate, estimate_time, flops

TIGHT = 0.9  # above this share of the device's memory the verdict is "tight"

ShapeFor = Callable[[Settings], ModelShape]  # the model shape for a (changed) fine-tuning method


@dataclass(frozen=True)
class Result:
    shape: ModelShape
    settings: Settings
    lengths: Lengths
    batch: Batch
    memory: Estimate
    time: TimeEstimate
    device: Device

    @property
    def total(self) -> int:
        return self.memory.total

    @property
    def fits(self) -> bool:
        return self.total <= self.device.memory_bytes

    @property
    def verdict(self) -> str:
        if not self.fits:
            return "does not fit"
        return "tight" if self.total > TIGHT * self.device.memory_bytes else "fits"


def compute(shape_for: ShapeFor, settings: Settings, lengths: Lengths, device: Device) -> Result:
    shape = shape_for(settings)
    data = lengths.clipped(settings.cutoff_len)
    batch = largest_batch(
        data,
        settings.batch_size * settings.generations,
        packing=settings.packing,
        padding_free=settings.padding_free,
        per_sample_attention=settings.per_sample_attention,
        cutoff_len=settings.cutoff_len,
        seed=settings.seed,
        extra_tokens=settings.generated_tokens,
    )
    memory = estimate_memory(shape, settings, batch, device_kind=device.kind)
    if not lengths.exact:
        memory.notes.append("streaming data: every sample taken as cutoff_len tokens long")
    run = run_tokens(
        data,
        batch_size=settings.batch_size,
        accumulation=settings.accumulation,
        world_size=settings.world_size,
        epochs=settings.epochs,
        max_steps=settings.max_steps,
        packing=settings.packing,
        padding_free=settings.padding_free,
        cutoff_len=settings.cutoff_len,
        seed=settings.seed,
    )
    total_flops = flops(shape, settings, data, run, chunked=uses_chunked_loss(shape, settings))
    overhead = step_overhead(shape, settings, device).per_step(settings.accumulation)
    time = estimate_time(
        total_flops,
        run,
        peak_flops=device.peak_flops,
        mfu=device.mfu,
        devices=settings.world_size,
        overhead_per_step=overhead,
    )
    return Result(shape, settings, data, batch, memory, time, device)
