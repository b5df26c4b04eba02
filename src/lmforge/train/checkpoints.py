"""Which checkpoint a run resumes from, and whether it is whole.

Resume is exact or refuses:
- a checkpoint is used only when every file a resume reads is whole: trainer_state.json parses,
  each safetensors file is as long as its header says, each torch file (optimizer.pt,
  scheduler.pt, rng_state.pth) has its zip directory, and optimizer.pt and scheduler.pt exist
  (without them the optimizer and the learning-rate schedule would silently restart), unless
  the run sets `save_only_model: true`, which resumes the weights only and says so;
- a checkpoint named explicitly that fails these checks is a UserError naming the file;
  `auto` skips it with a note and takes the newest checkpoint that passes;
- a run whose checkpoint already reached the planned number of steps is complete: nothing is
  trained and nothing is written (`completed_run`).

The final train_loss of a resumed run covers the whole run: each checkpoint records the sum of
the per-step losses so far (LOSS_STATE), which the resumed trainer adds to its own.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from lmforge.config.plan import RunPlan
from lmforge.errors import UserError

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
STAGING = ".staging"  # checkpoints are written here, then renamed into place whole
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
LOSS_STATE = "lmforge_state.json"  # {"global_step": N, "train_loss_sum": sum, "trainer": {...}}
RESULTS = ("train_results.json", "all_results.json")
_WEIGHTS = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class Problem:
    """Why a checkpoint cannot be resumed from: the file and what is wrong with it."""

    file: str
    reason: str
    missing_state: bool = False  # optimizer.pt / scheduler.pt absent (save_only_model resumes)

    def describe(self) -> str:
        return f"{self.file} {self.reason}"


@dataclass(frozen=True)
class Completed:
    """A resume of a run that had already trained every planned step."""

    checkpoint: Path
    step: int
    planned: int
    train_loss: float  # as recorded by the finished run (nan when it left no results)


def checkpoint_step(folder: Path) -> int | None:
    name = folder.name
    if not name.startswith(PREFIX) or not name[len(PREFIX) :].isdigit():
        return None
    return int(name[len(PREFIX) :])


def list_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders of output_dir, newest (largest N) first. Saves that never finished
    stay under .staging and are not listed."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step, reverse=True)


def read_state(folder: Path) -> dict:
    """trainer_state.json as a dict; ValueError with the reason when it is not usable."""
    path = folder / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError("is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"is not valid JSON ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise ValueError("has no global_step")
    return state


def safetensors_problem(path: Path) -> str | None:
    """None when the file is as long as its header says (a truncated copy is not)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"is truncated ({size} bytes)"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"is truncated ({size} bytes, shorter than its header)"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "has a damaged header"
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"is truncated ({size} bytes; its header describes {expected})"
    return None


def torch_file_problem(path: Path) -> str | None:
    """torch.save writes a zip archive whose directory is at the end: a truncated file has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        return f"is truncated or damaged ({exc})"
    return None


def checkpoint_problem(folder: Path, *, sharded_state: bool = False) -> Problem | None:
    """The first reason `folder` cannot be resumed from exactly, or None.

    `sharded_state`: DeepSpeed/FSDP keep weights and optimizer state in their own layout, so only
    trainer_state.json and the files present are checked."""
    try:
        read_state(folder)
    except ValueError as exc:
        return Problem(TRAINER_STATE, str(exc))
    if not sharded_state and not any((folder / name).is_file() for name in _WEIGHTS):
        return Problem(
            "model weights", "are missing (no adapter_model.safetensors or model.safetensors)"
        )
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = str(path.relative_to(folder))
        if path.suffix == ".safetensors":
            reason = safetensors_problem(path)
        elif path.suffix in (".pt", ".pth", ".bin"):
            reason = torch_file_problem(path)
        else:
            continue
        if reason:
            return Problem(name, reason)
    if not sharded_state:
        for name in (OPTIMIZER, SCHEDULER):
            if not (folder / name).is_file():
                return Problem(name, "is missing", missing_state=True)
    return None


def choose_checkpoint(config, plan: RunPlan) -> RunPlan:
    """The plan with the checkpoint this run resumes from, checked whole: the one named, or with
    `auto` the newest whole one (a damaged newer one is skipped with a note)."""
    model_only_ok = bool(config.passthrough.get("save_only_model"))
    sharded = bool(config.passthrough.get("deepspeed") or config.passthrough.get("fsdp"))
    output_dir = Path(config.train.output_dir)
    resume = plan.resume
    if resume.auto:
        candidates = list_checkpoints(output_dir)
    elif resume.checkpoint:
        candidates = [Path(resume.checkpoint)]
    else:
        return plan
    skipped: list[tuple[Path, Problem]] = []
    for folder in candidates:
        problem = checkpoint_problem(folder, sharded_state=sharded)
        if problem is not None and not (problem.missing_state and model_only_ok):
            skipped.append((folder, problem))
            continue
        for earlier, why in skipped:
            plan = plan.with_note(
                f"resume_from_checkpoint: auto skipped {earlier.name} ({why.describe()}); "
                f"resuming from {folder.name}"
            )
        model_only = problem is not None
        if model_only:
            plan = plan.with_note(
                f"resuming {folder.name} with its weights only (save_only_model: true; it has no "
                f"{problem.file}): the optimizer's moments start from zero, the learning-rate "
                "schedule continues from its step"
            )
        return replace(plan, resume=replace(resume, checkpoint=str(folder), model_only=model_only))
    if not skipped:  # `auto` and no checkpoint yet: a fresh start
        return plan.with_note(f"resume_from_checkpoint: no checkpoint in {output_dir}; fresh start")
    raise _unusable(config, plan, skipped)


def _unusable(config, plan: RunPlan, skipped: list[tuple[Path, Problem]]) -> UserError:
    folder, problem = skipped[0]
    if problem.missing_state:
        what = (
            f"{folder} has no {problem.file}, so resuming would restart the optimizer and the "
            "learning-rate schedule from zero instead of continuing them"
        )
        fix = (
            "resume from a checkpoint written without save_only_model, or set "
            "save_only_model: true to resume the weights only"
        )
    else:
        what = f"{folder} cannot be resumed from: {problem.describe()}"
        fix = f"resume from another checkpoint, or delete {folder.name}"
    if plan.resume.auto:
        others = "; ".join(f"{f.name}: {p.describe()}" for f, p in skipped[1:])
        what = (
            f"resume_from_checkpoint: auto found no complete checkpoint in "
            f"{config.train.output_dir}: {what}" + (f" (also {others})" if others else "")
        )
        fix += (
            "; to start over instead, set overwrite_output_dir: true and "
            "resume_from_checkpoint: false"
        )
    else:
        what = f"resume_from_checkpoint: {what}"
        if not problem.missing_state:
            fix += " (resume_from_checkpoint: auto takes the newest complete one)"
    return UserError(what, where=config.source, fix=fix)


def planned_steps(args, train_rows: int | None) -> int | None:
    """Optimizer steps the Trainer will run, computed as transformers does
    (Trainer.set_initial_training_values); None when it cannot be known here."""
    if args.max_steps > 0:
        return args.max_steps
    if not train_rows:
        return None
    per_step = args.per_device_train_batch_size * max(args.world_size, 1)
    batches = (
        train_rows // per_step if args.dataloader_drop_last else math.ceil(train_rows / per_step)
    )
    accumulation = args.gradient_accumulation_steps
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return math.ceil(args.num_train_epochs * per_epoch)


def completed_run(config, plan: RunPlan, args, train_rows: int | None) -> Completed | None:
    """The checkpoint being resumed already reached every planned step: say so, train nothing.
    (transformers would train one step past the end and overwrite the final weights.)"""
    checkpoint = plan.resume.checkpoint
    if not checkpoint:
        return None
    state = read_state(Path(checkpoint))
    step = state["global_step"]
    planned = planned_steps(args, train_rows)
    if planned is None:
        planned = int(state.get("max_steps") or 0)
    if not planned or step < planned:
        return None
    output_dir = Path(config.train.output_dir)
    loss = _recorded_train_loss(output_dir)
    logger.info(
        "The run in %s is complete: %s is at step %d of %d, so there is nothing left to train and "
        "nothing was changed. To train longer, raise num_train_epochs or max_steps; to train "
        "again from the start, use a new output_dir or set overwrite_output_dir: true and "
        "resume_from_checkpoint: false.",
        output_dir,
        Path(checkpoint).name,
        step,
        planned,
    )
    return Completed(Path(checkpoint), step, planned, loss)


def _recorded_train_loss(output_dir: Path) -> float:
    for name in RESULTS:
        try:
            return float(json.loads((output_dir / name).read_text())["train_loss"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return math.nan


# -- the whole run's train_loss -----------------------------------------------------------------


def write_loss_state(
    folder: Path, step: int, loss_sum: float, trainer_state: dict | None = None
) -> None:
    """LOSS_STATE, with what a trainer keeps besides the model and optimizer (BCO's running
    mean reward) under "trainer"."""
    state = {"global_step": step, "train_loss_sum": loss_sum}
    if trainer_state:
        state["trainer"] = trainer_state
    (folder / LOSS_STATE).write_text(json.dumps(state) + "\n")


def read_trainer_state(checkpoint: Path) -> dict:
    """What write_loss_state stored under "trainer" ({} for a checkpoint without it)."""
    try:
        saved = json.loads((checkpoint / LOSS_STATE).read_text())
    except (OSError, ValueError):
        return {}
    trainer = saved.get("trainer") if isinstance(saved, dict) else None
    return trainer if isinstance(trainer, dict) else {}


def read_loss_sum(checkpoint: Path) -> float:
    """Sum of the per-step training losses up to the checkpoint's step: from LOSS_STATE, else
    (a checkpoint from before it existed) from the logged losses in trainer_state.json, which
    miss the steps after the last log."""
    state = read_state(checkpoint)
    try:
        saved = json.loads((checkpoint / LOSS_STATE).read_text())
        if saved.get("global_step") == state["global_step"]:
            return float(saved["train_loss_sum"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    total, last = 0.0, 0
    for entry in state.get("log_history", []):
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    if last < state["global_step"]:
        logger.warning(
            "%s has no %s: the final train_loss leaves out steps %d-%d (not logged before it)",
            checkpoint.name,
            LOSS_STATE,
            last + 1,
            state["global_step"],
        )
    return total
