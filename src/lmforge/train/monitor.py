"""Watching a run: overfitting warnings, eval accuracy, and the tracker integrations."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
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
    "swanlab": ("swanlab", "swanlab"),  # lmforge[swanlab] includes its local viewer
    "mlflow": ("mlflow", "mlflow"),
}


# Trackers lmforge runs itself, with their settings (logging_dir, swanlab_*), instead of
# transformers' own callbacks, which read their settings from the environment only.
_OWN_CALLBACKS = ("tensorboard", "swanlab")
SWANLAB_API_HOST = "https://api.swanlab.cn"


def check_trackers(report_to: list[str]) -> None:
    """Every tracker's package is installed (else a UserError naming the extra)."""
    for name in report_to:
        if name in ("none", "all"):
            continue
        module, extra = TRACKERS.get(name, (name, None))
        if importlib.util.find_spec(module) is None:
            install = f"pip install 'lmforge[{extra}]'" if extra else f"pip install {module}"
            raise UserError(f"report_to: {name} needs the {module} package", fix=install)


def report_to(config) -> list[str]:
    """The trackers the run logs to: report_to (`all`: every installed one), plus swanlab
    with use_swanlab: true."""
    names = [r.strip() for r in config.train.report_to.split(",") if r.strip()]
    names = [n for n in names if n != "none"]
    if "all" in names:
        from transformers.integrations import get_available_reporting_integrations

        names = [n for n in names if n != "all"] + list(get_available_reporting_integrations())
    if config.track.use_swanlab:
        names.append("swanlab")
    return list(dict.fromkeys(names))


def check_tracker_settings(config) -> list[str]:
    """Before the model loads: each tracker's package is installed, and SwanLab's cloud mode
    has a login and a connection (else one line saying so). Returns `report_to(config)`."""
    names = report_to(config)
    check_trackers(names)
    if "swanlab" in names:
        _check_swanlab(config)
    return names


def trainer_report_to(config) -> list[str] | str:
    """TrainingArguments.report_to: the trackers transformers runs itself, after
    `check_tracker_settings` (TensorBoard and SwanLab come from `tracker_callbacks`)."""
    names = [n for n in check_tracker_settings(config) if n not in _OWN_CALLBACKS]
    return names or "none"


def tracker_callbacks(config) -> list:
    """TensorBoard writing to logging_dir (`tensorboard --logdir <logging_dir>` reads it;
    default output_dir/runs/<time>_<host>), and SwanLab with the swanlab_* settings."""
    names = report_to(config)
    callbacks = []
    if "tensorboard" in names:
        from transformers.integrations import TensorBoardCallback

        callback = TensorBoardCallback()
        if config.track.logging_dir:
            callback.logging_dir = config.track.logging_dir
        callbacks.append(callback)
    if "swanlab" in names:
        callbacks.append(_swanlab_callback(config))
    return callbacks


def tracker_lines(config) -> list[str]:
    """Where each tracker's logs go, and how to view them (for the plan)."""
    names = report_to(config)
    lines = []
    if "tensorboard" in names:
        folder = config.track.logging_dir or str(Path(config.train.output_dir or ".") / "runs")
        lines.append(f"TensorBoard: {folder} (view: tensorboard --logdir {folder})")
    if "swanlab" in names:
        track = config.track
        if track.swanlab_mode == "local":
            folder = track.swanlab_logdir or os.path.abspath("swanlog")
            lines.append(f"SwanLab (local): {folder} (view: swanlab watch {folder})")
        else:
            where = f"{track.swanlab_workspace}/" if track.swanlab_workspace else ""
            lines.append(f"SwanLab (cloud): project {where}{track.swanlab_project}")
    return lines


def _check_swanlab(config) -> None:
    track = config.track
    if track.swanlab_mode == "local":
        return  # written to swanlab_logdir; no account, no network
    where = config.where("swanlab_mode")
    host = os.environ.get("SWANLAB_API_HOST") or SWANLAB_API_HOST
    if not _reachable(host):
        raise UserError(
            f"swanlab_mode: cloud needs a SwanLab login at {host}, and this machine cannot "
            "reach it (offline?)",
            where=where,
            fix="set swanlab_mode: local to keep the run on this machine (works offline; view "
            "it with `swanlab watch <swanlab_logdir>`), or connect to the internet",
        )
    if not (track.swanlab_api_key or _saved_swanlab_key()):
        raise UserError(
            "swanlab_mode: cloud needs a SwanLab login, and none was found",
            where=where,
            fix="run `swanlab login` once, or set swanlab_api_key (or SWANLAB_API_KEY), or "
            "set swanlab_mode: local (no account needed)",
        )
    if track.swanlab_api_key:
        import swanlab

        try:
            swanlab.login(api_key=track.swanlab_api_key)
        except Exception as exc:  # swanlab raises its own AuthenticationError, or network errors
            raise UserError(
                f"SwanLab refused swanlab_api_key ({' '.join(str(exc).split())})",
                where=config.where("swanlab_api_key"),
                fix="copy the key again from swanlab.cn (Settings -> API Key), or set "
                "swanlab_mode: local",
            ) from None


def _saved_swanlab_key() -> str | None:
    """An API key from SWANLAB_API_KEY or a saved `swanlab login`, if swanlab can say."""
    if os.environ.get("SWANLAB_API_KEY"):
        return os.environ["SWANLAB_API_KEY"]
    try:
        from swanlab.sdk.internal.settings import Settings

        return Settings().api_key
    except Exception:  # an internal API of swanlab: no answer is "not logged in"
        return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """A TCP connection to the URL's host opens within `timeout` seconds."""
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"https://{url}")
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _swanlab_callback(config):
    """swanlab's transformers callback with the swanlab_* settings; it ends the SwanLab run
    when training ends, so the next run in the same process starts its own."""
    import swanlab
    from swanlab.integration.transformers import SwanLabCallback

    class LmforgeSwanLabCallback(SwanLabCallback):
        def on_train_end(self, args, state, control, **kwargs):
            if self._is_world_process_zero(state) and self._get_active_run() is not None:
                swanlab.finish()

    track = config.track
    return LmforgeSwanLabCallback(
        project=track.swanlab_project,
        workspace=track.swanlab_workspace,
        experiment_name=track.swanlab_run_name,
        mode=track.swanlab_mode,
        log_dir=track.swanlab_logdir,
        tags=["lmforge"],
    )


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
        if self.warned:
            return
        if overfitting(self.history, self.patience):
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


def overfitting(history: list[tuple[int, float, float | None]], patience: int = 2) -> bool:
    """The last `patience` evaluations each had a higher eval loss than the one before, while
    train loss fell (history: (step, eval loss, train loss at that time) per evaluation)."""
    recent = history[-(patience + 1) :]
    if len(recent) <= patience:
        return False
    eval_rising = all(b[1] > a[1] for a, b in zip(recent, recent[1:]))
    train_falling = all(
        a[2] is not None and b[2] is not None and b[2] < a[2] for a, b in zip(recent, recent[1:])
    )
    return eval_rising and train_falling


def eval_history(log_history: list[dict]) -> list[tuple[int, float, float | None]]:
    """(step, eval loss, the train loss logged last before it) per evaluation, from
    trainer.state.log_history: what OverfitWarningCallback records as training runs."""
    history, last_train = [], None
    for entry in log_history:
        if "loss" in entry:
            last_train = entry["loss"]
        if "eval_loss" in entry:
            history.append((entry.get("step", 0), entry["eval_loss"], last_train))
    return history


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
