"""transformers' Trainer, with checkpoints that appear whole or not at all."""

from __future__ import annotations

import os
import shutil

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

STAGING = ".staging"


class AtomicCheckpointTrainer(Trainer):
    """Writes each checkpoint under output_dir/.staging and renames it into place when complete,
    so a run killed during a save never leaves a checkpoint-N that resume would pick up."""

    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial=trial)
        staging = os.path.join(run_dir, STAGING)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
        original = self._get_output_dir
        self._get_output_dir = lambda trial: staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._get_output_dir = original
        if not self.args.should_save:
            return
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
