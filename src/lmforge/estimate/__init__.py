"""`lmforge estimate`: peak memory and time of a training run before it runs.

model_shape.py  counts and shapes from config.json on the meta device (no weights)
batches.py      the encoded data's lengths -> the largest batch, the run's tokens
settings.py     what the estimate depends on, read once from the config
memory.py       peak memory term by term        timing.py  FLOPs and time at measured MFU
devices.py      gpus.yaml (cards) and this machine   core.py  one estimate
advice.py       changes that make it fit         report.py  text and JSON
check.py        the one line and the stop before `lmforge train`
"""

from __future__ import annotations

from dataclasses import replace

from lmforge.estimate.batches import lengths_from_rows
from lmforge.estimate.core import Result, ShapeFor, compute
from lmforge.estimate.devices import Device
from lmforge.estimate.model_shape import model_shape
from lmforge.estimate.settings import Settings, settings_from_config


def shape_function(config, model_path, lora_alpha: int) -> ShapeFor:
    """Settings -> the model's shape with the settings' fine-tuning method (meta device)."""

    def shape_for(settings: Settings):
        method = replace(
            config.method, finetuning_type=settings.finetuning_type, lora_rank=settings.lora_rank
        )
        shape = model_shape(
            model_path, method, lora_alpha, trust_remote_code=config.model.trust_remote_code
        )
        if method.use_badam and method.finetuning_type == "full":
            # BAdam trains one decoder layer at a time: its gradients, fp32 copy and
            # optimizer states are one layer's; the other weights are held as frozen ones.
            shape = replace(shape, trainable_params=shape.largest_layer_params)
        return shape

    return shape_for


def estimate_run(
    config, plan, model_path, train_rows, device: Device, *, world_size: int = 1
) -> tuple[Result, ShapeFor]:
    """The estimate of training `config` (resolved as `plan`) on `world_size` x `device`."""
    settings = settings_from_config(config, plan, world_size=world_size, device_kind=device.kind)
    lengths = lengths_from_rows(train_rows, cutoff_len=config.data.cutoff_len)
    shape_for = shape_function(config, model_path, plan.lora_alpha)
    return compute(shape_for, settings, lengths, device), shape_for
