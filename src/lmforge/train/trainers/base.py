"""transformers' Trainer, with checkpoints that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from transformers import Trainer
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, rotate_checkpoints

from lmforge.train.checkpoints import (
    OPTIMIZER,
    STAGING,
    read_loss_sum,
    read_state,
    read_trainer_state,
    write_loss_state,
)
from lmforge.train.interrupt import InterruptCallback, signal_handlers

__all__ = ["STAGING", "AtomicCheckpointTrainer"]


class AtomicCheckpointTrainer(Trainer):
    """Writes each checkpoint under output_dir/.staging and renames it into place when complete,
    so a run killed during a save never leaves a checkpoint-N that resume would pick up.

    Also: checkpoints hold no tokenizer (it is saved once, in output_dir); each records the sum
    of the step losses so far, so a resumed run's train_loss covers the whole run; SIGINT/SIGTERM
    stop at the next step boundary with a checkpoint (InterruptCallback)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.interrupt = InterruptCallback()
        self.add_callback(self.interrupt)
        self._loss_sum_before = 0.0  # sum of the step losses before the resumed checkpoint
        self._resumed_step = 0

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._loss_sum_before, self._resumed_step = 0.0, 0
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            checkpoint = Path(resume_from_checkpoint)
            self._loss_sum_before = read_loss_sum(checkpoint)
            self._resumed_step = read_state(checkpoint)["global_step"]
            self.restore_checkpoint_state(read_trainer_state(checkpoint))
        with signal_handlers(self.interrupt):
            output = super().train(resume_from_checkpoint, *args, **kwargs)
        return TrainOutput(output.global_step, output.metrics["train_loss"], output.metrics)

    def log(self, logs, *args, **kwargs):
        # transformers' final train_loss averages the steps of this call only; after a resume,
        # add the steps before the checkpoint (their loss sum was saved with it).
        if "train_loss" in logs and "train_runtime" in logs and self._resumed_step:
            steps = max(self.state.global_step, 1)
            logs["train_loss"] = (self._loss_sum_before + self._total_loss_scalar) / steps
        super().log(logs, *args, **kwargs)

    def checkpoint_state(self) -> dict:
        """What this trainer keeps across steps besides the model, optimizer and schedule (a
        JSON-able dict saved with each checkpoint); restore_checkpoint_state takes it back."""
        return {}

    def restore_checkpoint_state(self, state: dict) -> None:
        pass

    def _loss_sum_so_far(self) -> float:
        """Sum of the per-step losses of the whole run up to now (the logged part is averaged
        over processes by transformers; the unlogged rest is gathered here the same way)."""
        residual = self._tr_loss
        if self.args.world_size > 1:
            residual = nested_gather(residual, self.args.parallel_mode).mean()
        return self._loss_sum_before + self._total_loss_scalar + residual.item()

    def _save(self, output_dir=None, state_dict=None):
        # The tokenizer is written once per run, in output_dir (run.py / output_dir.py), not
        # into every checkpoint (tokenizer.json alone is 33 MB for Gemma 3).
        tokenizer, self.processing_class = self.processing_class, None
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.processing_class = tokenizer

    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial=trial)
        staging = os.path.join(run_dir, STAGING)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
        loss_sum = self._loss_sum_so_far()  # every process: it may gather
        original = self._get_output_dir
        self._get_output_dir = lambda trial: staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._get_output_dir = original
        if not self.args.should_save:
            return
        write_loss_state(
            Path(staging, name), self.state.global_step, loss_sum, self.checkpoint_state()
        )
        final = os.path.join(run_dir, name)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(os.path.join(staging, name), final)
        if self.state.best_model_checkpoint and STAGING in self.state.best_model_checkpoint:
            self.state.best_model_checkpoint = final
        shutil.rmtree(staging, ignore_errors=True)
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=False,
        )

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if (
            checkpoint is None
            or self.is_deepspeed_enabled
            or self.is_fsdp_enabled
            or os.path.isfile(os.path.join(checkpoint, OPTIMIZER))
        ):
            return
        # A weights-only checkpoint (save_only_model; checkpoints.choose_checkpoint refuses it
        # otherwise): the optimizer starts fresh, the learning-rate schedule continues.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
            for _ in range(self.state.global_step):
                self.lr_scheduler.step()
