"""What to change when a run does not fit, each change with its new estimate; and how much
larger a batch would fit when a run is far below the limit.

Every candidate is estimated again with `core.compute` on changed settings (the model shape is
rebuilt on the meta device when the fine-tuning method changes). The smallest changes come
first: those that keep the training the same (batch split over accumulation, gradient
checkpointing, padding-free batches), then those that change what is trained or seen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lmforge.estimate.core import Result, ShapeFor, compute
from lmforge.estimate.settings import Settings, with_finetuning_type

FAR_BELOW = 0.5  # a run using less than this share of the device hears how much more fits
MAX_COMBINED = 4


@dataclass(frozen=True)
class Advice:
    change: str  # the keys to set, as the user writes them
    why: str
    result: Result

    def line(self) -> str:
        r = self.result
        return f"{self.change}: {r.total / 2**30:.2f} GiB ({r.verdict}) - {self.why}"


def candidates(s: Settings, device_kind: str) -> list[tuple[str, str, Settings]]:
    """(change, why, settings) for each single change worth trying, mildest first."""
    out: list[tuple[str, str, Settings]] = []
    b, acc = s.batch_size, s.accumulation
    smaller = b // 2
    while smaller >= 1:
        factor = b // smaller
        out.append(
            (
                f"per_device_train_batch_size: {smaller}, gradient_accumulation_steps: "
                f"{acc * factor}",
                f"the same {b * acc} samples per update, in smaller pieces",
                replace(s, batch_size=smaller, accumulation=acc * factor),
            )
        )
        smaller //= 2
    if not s.gradient_checkpointing:
        out.append(
            (
                "gradient_checkpointing: true",
                "recompute activations in the backward pass (about 30 % slower)",
                replace(s, gradient_checkpointing=True),
            )
        )
    if not s.padding_free and not s.packing and s.stage in ("sft", "pt"):
        out.append(
            (
                "padding_free: true",
                "no memory or compute spent on padding; the same samples and loss",
                replace(s, padding_free=True),
            )
        )
    if s.finetuning_type != "lora":
        out.append(
            (
                "finetuning_type: lora",
                "train small adapters instead of the weights (no gradients or optimizer states "
                "for the model)",
                with_finetuning_type(s, "lora", reference_copy=False),
            )
        )
    # On a CPU QLoRA was measured under bf16 only (8 % slower than LoRA): advised there where
    # bf16 runs natively and is asked for.
    if not s.quantization_bit and (device_kind == "cuda" or s.bf16):
        slower = "" if device_kind == "cuda" else "; about 10 % slower on the CPU"
        out.append(
            (
                "finetuning_type: lora, quantization_bit: 4"
                if s.finetuning_type != "lora"
                else "quantization_bit: 4",
                f"QLoRA: the frozen linear weights in 4 bits (needs bitsandbytes{slower})",
                with_finetuning_type(
                    s,
                    "lora",
                    quantization_bit=4,
                    pure_bf16=False,
                    autocast_16bit=True,
                    reference_copy=False,
                ),
            )
        )
    if device_kind == "cuda" and s.finetuning_type == "full" and "8bit" not in s.optim:
        out.append(
            (
                "optim: adamw_8bit",
                "8-bit AdamW states (needs bitsandbytes)",
                replace(s, optim="adamw_8bit"),
            )
        )
    if s.world_size > 1 and s.zero_stage < 3:
        out.append(
            (
                "deepspeed: examples/deepspeed/ds_z3_config.json",
                f"ZeRO-3 shards weights, gradients and optimizer states over {s.world_size} GPUs",
                replace(s, zero_stage=3, lean_mlp=False),
            )
        )
    if s.world_size > 1 and not (s.zero_stage == 3 and s.offload_optimizer):
        out.append(
            (
                "deepspeed: examples/deepspeed/ds_z3_offload_config.json",
                "ZeRO-3 with weights and optimizer states offloaded to CPU memory (slower)",
                replace(
                    s, zero_stage=3, offload_optimizer=True, offload_param=True, lean_mlp=False
                ),
            )
        )
    cutoff = s.cutoff_len // 2
    if cutoff >= 128:
        out.append(
            (
                f"cutoff_len: {cutoff}",
                "shorter samples (longer ones are cut: check `lmforge data inspect`)",
                replace(s, cutoff_len=cutoff),
            )
        )
    return out


def advise(result: Result, shape_for: ShapeFor) -> list[Advice]:
    """Changes that make `result` fit: single changes that fit, else the fewest combined."""
    s, device = result.settings, result.device
    tried = [
        Advice(change, why, compute(shape_for, new, result.lengths, device))
        for change, why, new in candidates(s, device.kind)
    ]
    fitting = [a for a in tried if a.result.fits]
    if fitting:
        # the first batch split that fits is enough; smaller ones add nothing
        shown, batch_shown = [], False
        for a in fitting:
            is_batch = a.change.startswith("per_device_train_batch_size")
            if is_batch and batch_shown:
                continue
            batch_shown |= is_batch
            shown.append(a)
        return shown
    return _combined(result, shape_for, tried)


def _combined(result: Result, shape_for: ShapeFor, tried: list[Advice]) -> list[Advice]:
    """Greedy: take the change that saves most, then the next on top of it, until it fits."""
    chosen: list[str] = []
    whys: list[str] = []
    settings = result.settings
    current = result
    for _ in range(MAX_COMBINED):
        options = [
            (change, why, new)
            for change, why, new in candidates(settings, result.device.kind)
            if not any(change.split(":")[0] == c.split(":")[0] for c in chosen)
        ]
        if not options:
            break
        best = min(
            (
                (compute(shape_for, new, result.lengths, result.device), change, why, new)
                for change, why, new in options
            ),
            key=lambda item: item[0].total,
        )
        if best[0].total >= current.total:
            break
        current, settings = best[0], best[3]
        chosen.append(best[1])
        whys.append(best[2])
        if current.fits:
            return [Advice("; ".join(chosen), "; ".join(whys), current)]
    return []


def larger_batch(result: Result, shape_for: ShapeFor, limit: int = 1024) -> Result | None:
    """The largest per-device batch that still fits, when the run uses under half the device."""
    if result.total > FAR_BELOW * result.device.memory_bytes:
        return None
    s = result.settings
    best = None
    size = s.batch_size
    while size < limit:
        size *= 2
        trial = compute(shape_for, replace(s, batch_size=size), result.lengths, result.device)
        if not trial.fits:
            break
        best = trial
        if size >= result.lengths.samples:  # more than the data holds: nothing larger to see
            break
    if best is None:
        return None
    low, high = best.settings.batch_size, min(best.settings.batch_size * 2, limit)
    while high - low > 1:
        mid = (low + high) // 2
        trial = compute(shape_for, replace(s, batch_size=mid), result.lengths, result.device)
        if trial.fits:
            low, best = mid, trial
        else:
            high = mid
    return best
