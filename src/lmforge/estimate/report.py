"""The estimate as text for people and as JSON for machines."""

from __future__ import annotations

import numpy as np

from lmforge.estimate.advice import Advice
from lmforge.estimate.core import Result

GIB = 2**30
TERM_ORDER = (
    "weights",
    "gradients",
    "optimizer states",
    "reference model",
    "activations",
    "loss buffers",
    "allocator (CPU)",
    "optimizer step",
    "rollout KV cache",
    "framework",
)


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {m:02d} min"
    return f"{hours / 24:.1f} days"


def one_line(result: Result, free_bytes: int | None = None) -> str:
    """`memory: estimated peak 3.95 GiB per device of 21.0 GiB free (fits)`."""
    limit = free_bytes if free_bytes is not None else result.device.memory_bytes
    word = "free" if free_bytes is not None else "on " + result.device.name
    return (
        f"estimated peak {gib(result.total)} per device of {gib(limit)} {word} "
        f"({'fits' if result.total <= limit else 'over'}; `lmforge estimate` for the breakdown)"
    )


def render(
    result: Result,
    advice: list[Advice],
    larger: Result | None,
    *,
    title: str,
    calibration: dict | None = None,
    other_cards: list[str] | None = None,
) -> str:
    r, s, shape, batch = result, result.settings, result.shape, result.batch
    device = r.device
    lengths = r.lengths.tokens
    gpus = f" x {s.world_size}" if s.world_size > 1 else ""
    method = s.finetuning_type + (f" r={shape.lora_rank}" if s.finetuning_type == "lora" else "")
    if s.quantization_bit:
        method += f", {s.quantization_bit}-bit base (QLoRA)"
    lines = [
        f"Estimate for {title} on {device.name}{gpus} ({gib(device.memory_bytes)} each)",
        f"  model: {shape.model_type}, {shape.total_params:,} parameters, "
        f"{shape.trainable_params:,} trainable ({method}); {shape.layers} layers, hidden "
        f"{shape.hidden}, vocabulary {shape.vocab:,}",
    ]
    if len(lengths):
        lines.append(
            f"  data: {r.lengths.samples} samples of {int(lengths.min())}-{int(lengths.max())} "
            f"tokens (median {int(np.median(lengths))}) at cutoff_len {s.cutoff_len}"
        )
    layout = "one row, samples side by side" if batch.flattened else "padded rows"
    lines.append(
        f"  largest batch: {batch.rows} x {batch.row_len} = {batch.positions:,} positions "
        f"({layout}; {batch.real_tokens:,} real tokens, {batch.trained:,} trained)"
    )
    lines += ["", "Peak memory per device"]
    for name in TERM_ORDER:
        if name not in r.memory.terms:
            continue
        value = r.memory.terms[name]
        detail = r.memory.details.get(name, "")
        lines.append(f"  {name:<18}{gib(value):>12}   {detail}")
    lines.append(
        "  (not alive at once, the largest counts: activations + loss buffers (+ allocator); "
        + ("gradients + " if "gradients" in r.memory.peak_group else "")
        + "optimizer step; rollout KV cache)"
    )
    if r.memory.loading:
        above = r.memory.loading > r.memory.training
        than = f"{'above' if above else 'below'} training's {gib(r.memory.training)}"
        detail = r.memory.loading_detail
        lines.append(f"  {'loading (CPU)':<18}{gib(r.memory.loading):>12}   {detail}")
        lines.append(f"  {'':<30}   before training, {than}{': the peak' if above else ''}")
    share = r.total / device.memory_bytes if device.memory_bytes else float("inf")
    lines.append(
        f"  {'total':<18}{gib(r.total):>12}   of {gib(device.memory_bytes)}: {r.verdict} "
        f"({share:.0%})"
    )
    lines += [f"  note: {note}" for note in r.memory.notes]
    t = r.time
    overhead = ""
    if t.overhead_per_step:
        overhead = (
            f" + {t.overhead_per_step:.2f} s a step outside the matmuls (host work, weights "
            "through memory)"
        )
    lines += [
        "",
        "Time",
        f"  tokens: {t.real_tokens:,} real over {t.steps:,} steps ({t.positions:,} positions "
        f"computed, padding included)",
        f"  FLOPs per token: {t.flops_per_token / 1e9:.2f} GFLOP; run: {t.total_flops:.3g} FLOP",
        f"  expected: {t.tokens_per_second:,.0f} tokens/s at MFU {device.mfu:.0%} of "
        f"{device.peak_flops / 1e12:.3g} TFLOP/s ({device.source}){overhead} -> "
        f"{duration(t.seconds)}",
    ]
    if calibration:
        lines.append(
            f"  calibrated: {calibration['steps']} real steps here took "
            f"{calibration['seconds_per_step']:.2f} s each ({calibration['tokens_per_second']:,.0f} "
            f"tokens/s) -> {duration(calibration['run_seconds'])} for the run (extrapolated "
            f"from measured steps; peak RSS/allocated {gib(calibration['peak_bytes'])})"
        )
    if advice:
        lines += ["", "To make it fit (each with its new estimate):"]
        lines += [f"  - {a.line()}" for a in advice]
    elif not r.fits:
        lines += ["", "No change lmforge tries makes it fit on this device."]
    if other_cards is not None and not r.fits:
        if other_cards:
            lines.append(f"  as configured it fits on: {', '.join(other_cards)}")
        else:
            lines.append("  as configured it fits on none of the cards in gpus.yaml")
    if larger is not None:
        lines += [
            "",
            f"Room to spare: per_device_train_batch_size up to {larger.settings.batch_size} fits "
            f"({gib(larger.total)}, {larger.verdict}).",
        ]
    return "\n".join(lines)


def to_dict(
    result: Result,
    advice: list[Advice],
    larger: Result | None,
    *,
    calibration: dict | None = None,
    other_cards: list[str] | None = None,
) -> dict:
    r = result
    t = r.time
    return {
        "total_bytes": r.total,
        "training_bytes": r.memory.training,
        "loading_bytes": r.memory.loading,
        "device_bytes": r.device.memory_bytes,
        "fits": r.fits,
        "verdict": r.verdict,
        "terms": {k: r.memory.terms[k] for k in TERM_ORDER if k in r.memory.terms},
        "term_details": dict(r.memory.details),
        "peak_group": list(r.memory.peak_group),
        "notes": list(r.memory.notes),
        "device": {
            "name": r.device.name,
            "kind": r.device.kind,
            "count": r.settings.world_size,
            "peak_flops": r.device.peak_flops,
            "mfu": r.device.mfu,
            "source": r.device.source,
        },
        "model": {
            "type": r.shape.model_type,
            "total_params": r.shape.total_params,
            "trainable_params": r.shape.trainable_params,
        },
        "batch": {
            "rows": r.batch.rows,
            "row_len": r.batch.row_len,
            "positions": r.batch.positions,
            "real_tokens": r.batch.real_tokens,
            "trained": r.batch.trained,
        },
        "time": {
            "steps": t.steps,
            "real_tokens": t.real_tokens,
            "positions": t.positions,
            "flops_per_token": t.flops_per_token,
            "total_flops": t.total_flops,
            "tokens_per_second": t.tokens_per_second,
            "seconds": t.seconds,
            "overhead_seconds_per_step": t.overhead_per_step,
        },
        "calibration": calibration,
        "advice": [
            {"change": a.change, "why": a.why, "total_bytes": a.result.total, "fits": a.result.fits}
            for a in advice
        ],
        "larger_batch": None
        if larger is None
        else {
            "per_device_train_batch_size": larger.settings.batch_size,
            "total_bytes": larger.total,
        },
        "fits_on": other_cards,
    }
