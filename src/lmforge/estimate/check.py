"""Before `lmforge train` loads the model: the estimate's one line for the plan, and a stop
with advice when the run clearly cannot fit in the device's free memory."""

from __future__ import annotations

import logging
import os

from lmforge.config.plan import RunPlan
from lmforge.errors import UserError
from lmforge.estimate import estimate_run
from lmforge.estimate.advice import advise
from lmforge.estimate.devices import Device, free_memory
from lmforge.estimate.report import gib, one_line
from lmforge.train import launch

logger = logging.getLogger(__name__)

MARGIN = 1.25  # stop only when the estimate exceeds free memory by a quarter (estimates err)


def estimate_as_trained(config, plan, model_path, rows, device, *, world_size: int = 1):
    """(result, shape_for, plan) of the run as `lmforge train` runs it on `device`: with
    gradient checkpointing turned on in the plan (and a note saying why) when the run does not
    fit without it and the config leaves it unset (LLaMA-Factory has it on always; here it
    costs its 30 % only where it is needed)."""
    result, shape_for = estimate_run(config, plan, model_path, rows, device, world_size=world_size)
    if result.fits or not plan.checkpointing.auto or plan.checkpointing.on:
        return result, shape_for, plan
    plan = plan.with_checkpointing(
        f"gradient checkpointing on: without it this run needs about {gib(result.total)} per "
        f"device of {gib(device.memory_bytes)} free (set gradient_checkpointing: false to keep "
        "it off)"
    )
    result, shape_for = estimate_run(config, plan, model_path, rows, device, world_size=world_size)
    return result, shape_for, plan


def memory_line_and_check(
    config, plan, setup, data, *, free_bytes: int | None = None
) -> tuple[str, RunPlan]:
    """The plan's memory line, and the plan (estimate_as_trained: gradient checkpointing may be
    turned on). Raises UserError (with advice) when the estimate still exceeds the free memory
    by MARGIN, unless skip_memory_check. `data` is the stage's StageData."""
    import torch

    kind = "cuda" if torch.cuda.is_available() else "cpu"
    free = free_memory(kind) if free_bytes is None else free_bytes
    # Processes on one machine share its RAM; GPUs each have their own.
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    world = launch.world_size()
    limit = free // local if kind == "cpu" else free
    device = Device("this device", kind, limit, 0.0, 0.0, "free memory now")
    try:
        result, shape_for, plan = estimate_as_trained(
            config, plan, setup.resolved.path, data.train, device, world_size=world
        )
    except Exception as exc:  # noqa: BLE001 - an estimate must never stop a run that may fit
        logger.debug("memory estimate failed", exc_info=True)
        return f"not estimated ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})", plan
    line = one_line(result, free_bytes=limit)
    if result.total <= MARGIN * limit or config.train.skip_memory_check:
        return line, plan
    advice = advise(result, shape_for)
    fixes = "; ".join(f"{a.change} ({gib(a.result.total)})" for a in advice[:4])
    memory = result.memory
    terms = ", ".join(f"{name} {gib(value)}" for name, value in memory.terms.items() if value)
    if memory.loading > memory.training:  # the peak is before training: say what it holds
        terms = f"while loading: {memory.loading_detail}; training's own {gib(memory.training)}"
    raise UserError(
        f"this run needs about {gib(result.total)} per device at its peak ({terms}) and "
        f"{'the GPU' if kind == 'cuda' else 'this machine'} has {gib(limit)} free, so it would "
        "run out of memory",
        where=config.source,
        fix=(f"set {fixes}" if fixes else "use a device with more memory")
        + "; `lmforge estimate` shows the breakdown; skip_memory_check: true trains anyway",
    )
