"""Watching a run: overfitting warnings, eval accuracy, and the tracker integrations."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from lmforge.data.encoding.encode import IGNORE_INDEX
from lmforge.errors import UserError

logger = logging.getLogger(__name__)

# report_to name -> (module to import, lmforge extra that installs it)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "swanlab": ("swanlab", "swanlab"),
    "mlflow": ("mlflow", "mlflow"),
}


def check_trackers(report_to: list[str]) -> None:
    for name in report_to:
        if name in ("none", "all"):
            continue
        module, extra = TRACKERS.get(name, (name, None))
        if importlib.util.find_spec(module) is None:
            install = f"pip install 'lmforge[{extra}]'" if extra else f"pip install {module}"
            raise UserError(f"report_to: {name} needs the {module} package", fix=install)
    if "swanlab" in report_to and not os.environ.get("SWANLAB_API_KEY"):
        # SwanLab's local mode needs no account: logs stay in ./swanlog, viewable offline.
        os.environ.setdefault("SWANLAB_MODE", "local")


class OverfitWarningCallback(TrainerCallback):
    """Warns when eval loss rises while train loss falls, naming the best checkpoint so far."""

    def __init__(self, patience: int = 2):
        self.patience = patience
        self.history: list[tuple[int, float, float | None]] = []  # step, eval loss, train loss
        self.last_train_loss: float | None = None
        self.warned = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_train_loss = logs["loss"]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or "eval_loss" not in metrics:
            return
        self.history.append((state.global_step, metrics["eval_loss"], self.last_train_loss))
        recent = self.history[-(self.patience + 1) :]
        if self.warned or len(recent) <= self.patience:
            return
        eval_rising = all(b[1] > a[1] for a, b in zip(recent, recent[1:]))
        train_falling = all(
            a[2] is not None and b[2] is not None and b[2] < a[2]
            for a, b in zip(recent, recent[1:])
        )
        if eval_rising and train_falling:
            best_step, best_loss, _ = min(self.history, key=lambda h: h[1])
            logger.warning(
                "Overfitting: eval loss rose for %d evaluations while train loss fell. "
                "Best eval loss %.4f at step %d (%s). Consider fewer epochs, more data, or "
                "early_stopping_patience with load_best_model_at_end.",
                self.patience,
                best_loss,
                best_step,
                best_checkpoint(args, state, best_step),
            )
            self.warned = True


def best_checkpoint(args, state, best_step: int) -> str:
    """The checkpoint holding the best weights, by its path, or why there is none."""
    if state.best_model_checkpoint:  # tracked by transformers with load_best_model_at_end
        return f"best checkpoint: {state.best_model_checkpoint}"
    output_dir = getattr(args, "output_dir", None)
    path = Path(output_dir) / f"checkpoint-{best_step}" if output_dir else None
    if path is not None and path.is_dir():
        return f"best checkpoint: {path}"
    return (
        f"no checkpoint was saved at step {best_step}; make save_steps a multiple of "
        "eval_steps to keep one"
    )


def argmax_logits(logits, labels):
    """Keep only the predicted ids, so evaluation never holds full-vocabulary logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def token_accuracy(eval_prediction) -> dict[str, float]:
    """Next-token accuracy over the trained (label != -100) positions."""
    predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
    predictions, labels = predictions[:, :-1], labels[:, 1:]  # logits at t predict token t+1
    mask = labels != IGNORE_INDEX
    correct = (predictions == labels) & mask
    return {"accuracy": float(np.sum(correct) / max(np.sum(mask), 1))}
