"""The output folder: checked before the model loads, prepared before training writes to it.

`check_output_dir` (before the model loads) refuses an output_dir that cannot be written:
under a file, not creatable, read-only, or the model's own folder or a folder inside it (refused
even with overwrite_output_dir: the run would write over the weights it reads).

`prepare_output_dir` (after the model is built, before the first file is written) warns when the
disk has less free space than the run will write, then creates the folder, removes an unfinished
save, and writes the tokenizer once (checkpoints do not carry it).

The disk estimate, kept simple: AdamW checkpoints hold the saved weights (the trainable
parameters for LoRA, every parameter otherwise, at their training dtype) plus two optimizer
moments per trainable parameter; the run writes ceil(steps / save_steps) checkpoints, keeps
save_total_limit of them (plus the one written before the oldest is deleted), and the final
weights once more in output_dir.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lmforge.config.plan import RunPlan
from lmforge.errors import UserError
from lmforge.paths import nearest_existing
from lmforge.train.checkpoints import STAGING

logger = logging.getLogger(__name__)


def check_output_dir(config, plan: RunPlan, model_path: str | Path | None) -> None:
    """Refuse an output_dir that training could not write, or one that would overwrite the
    model it trains. Writes nothing."""
    output_dir = Path(config.train.output_dir).expanduser().absolute()
    where = config.source
    existing = nearest_existing(output_dir)
    if existing != output_dir and not existing.is_dir():
        raise UserError(
            f"output_dir {output_dir} cannot be created: {existing} is a file",
            where=where,
            fix="choose an output_dir whose parent folders are folders (e.g. saves/my-run)",
        )
    if existing == output_dir and not output_dir.is_dir():
        raise UserError(
            f"output_dir {output_dir} is a file",
            where=where,
            fix="choose a folder path (e.g. saves/my-run)",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == output_dir:
            what = f"output_dir {output_dir} is not writable (a read-only folder or file system)"
        else:
            what = f"output_dir {output_dir} cannot be created: {existing} is not writable"
        raise UserError(
            what,
            where=where,
            fix="choose an output_dir in a folder you can write to, or change the folder's "
            "permissions",
        )
    if model_path is None or not Path(model_path).is_dir():
        return
    model_dir = Path(model_path).resolve()
    real = output_dir.resolve()
    if real == model_dir or model_dir in real.parents:
        place = "the model's own folder" if real == model_dir else "inside the model's folder"
        raise UserError(
            f"output_dir {output_dir} is {place} ({model_dir}): training would write its "
            "checkpoints and weights over the model it reads",
            where=where,
            fix="choose an output_dir outside the model's folder (e.g. saves/my-run); "
            "overwrite_output_dir does not change this",
        )
    if real in model_dir.parents and config.train.overwrite_output_dir:
        inside = model_dir.relative_to(real).parts[0]
        if inside.startswith("checkpoint-") and not plan.resume.checkpoint:
            raise UserError(
                f"the model {model_dir} is in output_dir {output_dir}, and "
                f"overwrite_output_dir: true deletes its checkpoint folders ({inside})",
                where=where,
                fix="choose another output_dir, or copy the checkpoint out of it first",
            )


@dataclass(frozen=True)
class DiskEstimate:
    checkpoints: int  # held on disk at once, at most
    per_checkpoint: int  # bytes
    final: int  # bytes of the final weights in output_dir

    @property
    def total(self) -> int:
        return self.checkpoints * self.per_checkpoint + self.final


def estimate_disk(
    model,
    *,
    steps: int | None,
    save_steps: int,
    save_total_limit: int | None,
    save_only_model: bool = False,
) -> DiskEstimate:
    """See the module docstring for what is counted."""
    trainable = weights = 0
    for param in model.parameters():
        size = param.numel() * param.element_size()
        weights += size
        if param.requires_grad:
            trainable += size
    saved = trainable if hasattr(model, "peft_config") else weights
    optimizer = 0 if save_only_model else 2 * trainable
    written = math.ceil(steps / save_steps) if steps else 1
    kept = written
    if save_total_limit and written > save_total_limit:
        kept = save_total_limit + 1  # the new one is written before the oldest is deleted
    return DiskEstimate(kept, saved + optimizer, saved)


def check_free_space(output_dir: Path, estimate: DiskEstimate) -> bool:
    """Warn (with the numbers) when the disk holding output_dir has less free space than the
    run will write; True when there is enough."""
    free = shutil.disk_usage(nearest_existing(Path(output_dir).absolute())).free
    if free >= estimate.total:
        return True
    logger.warning(
        "output_dir %s: %s free on its disk, but this run writes about %s (%d checkpoint(s) of "
        "%s + the final weights, %s). Lower save_total_limit, set save_only_model: true, or "
        "choose an output_dir on a larger disk.",
        output_dir,
        human_size(free),
        human_size(estimate.total),
        estimate.checkpoints,
        human_size(estimate.per_checkpoint),
        human_size(estimate.final),
    )
    return False


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def prepare_output_dir(
    config, plan: RunPlan, output_dir: Path, *, model, setup, steps: int | None
) -> None:
    """Main process only, after the model is built and before training: the free-space check,
    the folder, an unfinished save removed, old checkpoints of a replaced run removed, and the
    tokenizer written once for the whole run."""
    train = config.train
    check_free_space(
        output_dir,
        estimate_disk(
            model,
            steps=steps,
            save_steps=train.save_steps,
            save_total_limit=train.save_total_limit,
            save_only_model=bool(config.passthrough.get("save_only_model")),
        ),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(output_dir / STAGING, ignore_errors=True)  # a save that never finished
    if train.overwrite_output_dir and not plan.resume.checkpoint:
        # A fresh run: old checkpoints would otherwise be picked up by `resume: auto` later.
        for old in output_dir.glob("checkpoint-*"):
            shutil.rmtree(old)
    save_tokenizer(setup, output_dir)


def save_tokenizer(setup, output_dir: Path) -> None:
    """The tokenizer with the template used in training, once per run folder: checkpoints
    omit it, and loading a checkpoint-N folder as a model finds it in the folder above
    (model/setup.py)."""
    tokenizer = setup.tokenizer
    original = tokenizer.chat_template
    tokenizer.chat_template = setup.template.jinja
    try:
        tokenizer.save_pretrained(str(output_dir))
    finally:
        tokenizer.chat_template = original
