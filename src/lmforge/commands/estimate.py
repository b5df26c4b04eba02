"""`lmforge estimate CONFIG.yaml [--gpu NAME] [--gpus N] [--calibrate] [--json]`: peak memory
and time of a training run, before it runs.

The config is checked as `lmforge train` checks it, the data encoded as training encodes it
(the same cache), and the model built on the meta device from config.json: no weights are
read. With --calibrate a few real steps run here (in a temporary folder) and the time is
extrapolated from them instead.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from lmforge.errors import UserError

logger = logging.getLogger(__name__)

CALIBRATION_STEPS = 3  # measured after one warm-up step


def estimate_command(
    path: str | None,
    overrides: list[str],
    *,
    gpu: str | None = None,
    gpus: int = 1,
    calibrate: bool = False,
    as_json: bool = False,
    measure_peak=None,
) -> tuple[str, int]:
    """The report (text or JSON) and the exit code: 0 when it fits, 1 when it does not."""
    from lmforge.config import load_config

    config = load_config(path, overrides)
    result, advice, larger, others, calibration = estimate_config(
        config, gpu=gpu, gpus=gpus, calibrate=calibrate, measure_peak=measure_peak
    )
    from lmforge.estimate.report import render, to_dict

    if as_json:
        data = to_dict(result, advice, larger, calibration=calibration, other_cards=others)
        return json.dumps(data, indent=1), 0 if result.fits else 1
    title = path or "the command-line config"
    text = render(result, advice, larger, title=title, calibration=calibration, other_cards=others)
    return text, 0 if result.fits else 1


def estimate_config(config, *, gpu=None, gpus=1, calibrate=False, measure_peak=None):
    import torch

    from lmforge import device as this_machine
    from lmforge.config.resolve import resolve_for_training
    from lmforge.estimate.advice import advise, larger_batch
    from lmforge.estimate.check import estimate_as_trained
    from lmforge.estimate.devices import card_device, cards, this_device
    from lmforge.model.setup import prepare_model_setup
    from lmforge.train.stages import get_stage

    if gpus < 1:
        raise UserError(f"--gpus {gpus}: the number of GPUs must be at least 1", fix="--gpus 1")
    if calibrate and gpu:
        raise UserError(
            "--calibrate measures steps on this machine, so it cannot be combined with --gpu",
            fix="drop --gpu to calibrate here, or --calibrate to estimate for the named card",
        )
    cuda = bool(gpu) or torch.cuda.is_available()
    plan = resolve_for_training(
        config,
        bf16_supported=True if gpu else this_machine.supports_bf16(),
        cuda=cuda,
        check_output_dir=False,  # nothing is written
    )
    bf16 = plan.precision.compute_dtype == torch.bfloat16
    target = card_device(gpu) if gpu else this_device(measure_peak=measure_peak, bf16=bf16)
    stage = get_stage(config.method.stage)
    stage.check(config)
    setup = prepare_model_setup(config, training=True)  # tokenizer and template; no weights
    data = stage.datasets(config, setup)
    result, shape_for, trained_plan = estimate_as_trained(
        config, plan, setup.resolved.path, data.train, target, world_size=gpus
    )
    if trained_plan.checkpointing.on and not plan.checkpointing.on:
        result.memory.notes.append(
            "gradient checkpointing on: `lmforge train` turns it on, since the run does not "
            "fit without it (gradient_checkpointing: false keeps it off)"
        )
    advice = [] if result.fits else advise(result, shape_for)
    larger = larger_batch(result, shape_for) if result.fits else None
    others = None
    if not result.fits and gpu:
        from lmforge.estimate.core import compute

        others = [
            card["name"]
            for card in cards()
            if compute(shape_for, result.settings, result.lengths, card_device(card["name"])).fits
        ]
    calibration = None
    if calibrate:
        calibration = calibrate_here(config, result)
    return result, advice, larger, others, calibration


def calibrate_here(config, result) -> dict:
    """Train CALIBRATION_STEPS + 1 real steps in a temporary folder; seconds per step after the
    first, extrapolated to the run's steps."""
    import resource

    import torch

    from lmforge.train.run import run_training

    steps = CALIBRATION_STEPS + 1
    with tempfile.TemporaryDirectory(prefix="lmforge-calibrate-") as folder:
        train = replace(
            config.train,
            output_dir=folder,
            overwrite_output_dir=True,
            max_steps=steps,
            logging_steps=1,
            save_steps=10**9,
            eval_strategy="no",
            plot_loss=False,
            report_compare=False,
            report_to="none",
            resume_from_checkpoint=None,
            early_stopping_patience=None,
            load_best_model_at_end=False,
        )
        calib = replace(
            config, train=train, eval=replace(config.eval, do_predict=False), passthrough={}
        )
        calib = replace(calib, data=replace(config.data, val_size=0, eval_dataset=None))
        logger.info("--calibrate: training %d steps in %s", steps, folder)
        run_training(calib)
        log = [
            json.loads(line)
            for line in (Path(folder) / "trainer_log.jsonl").read_text().splitlines()
            if line.strip()
        ]
    entries = [e for e in log if "elapsed_time" in e and "current_steps" in e]
    if len(entries) < 2:
        raise UserError("--calibrate: the calibration run logged too few steps to time")
    first, last = entries[0], entries[-1]
    steps_timed = max(last["current_steps"] - first["current_steps"], 1)
    elapsed = max(_seconds(last["elapsed_time"]) - _seconds(first["elapsed_time"]), 1e-9)
    seconds = elapsed / steps_timed
    tokens = (last.get("num_tokens", 0) - first.get("num_tokens", 0)) / elapsed
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run_seconds = seconds * result.time.steps
    return {
        "steps": steps_timed,
        "seconds_per_step": seconds,
        "tokens_per_second": tokens,
        "run_seconds": run_seconds,
        "peak_bytes": peak,
    }


def _seconds(clock: str) -> float:
    """trainer_log.jsonl's H:MM:SS (or `N days, H:MM:SS`) -> seconds."""
    days = 0
    if "day" in clock:
        head, clock = clock.split(",", 1)
        days = int(head.split()[0])
    h, m, s = (float(part) for part in clock.strip().split(":"))
    return days * 86400 + h * 3600 + m * 60 + s
