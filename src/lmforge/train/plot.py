"""training_loss.png from trainer_log.jsonl."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def plot_loss(output_dir: str | Path) -> Path | None:
    """Plot train (and eval) loss by step into output_dir/training_loss.png. With no loss
    logged (a run shorter than logging_steps), a warning says so and nothing is written."""
    output_dir = Path(output_dir)
    log = output_dir / "trainer_log.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    train = [(r["current_steps"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["current_steps"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        logger.warning(_nothing_logged(output_dir))
        return None

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        marker = "o" if len(train) == 1 else None  # one point draws no line
        ax.plot(*zip(*train), label="train loss", color="#1f77b4", alpha=0.5, marker=marker)
        if len(train) >= 5:
            ax.plot(*zip(*_smooth(train)), label="train loss (smoothed)", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals), label="eval loss", color="#d62728", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"training loss of {output_dir.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    path = output_dir / "training_loss.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _nothing_logged(output_dir: Path) -> str:
    """Why there is no plot: the run's steps and logging_steps, from trainer_state.json."""
    steps = logging_steps = None
    state = output_dir / "trainer_state.json"
    if state.is_file():
        try:
            data = json.loads(state.read_text(encoding="utf-8"))
            steps, logging_steps = data.get("global_step"), data.get("logging_steps")
        except (OSError, ValueError):
            pass
    ran = (
        f"the run took {steps} step(s) with logging_steps: {logging_steps}"
        if steps
        else ("the run logged no step")
    )
    fix = (
        f"set logging_steps to at most {steps}"
        if steps
        else "set logging_steps to at most the number of steps"
    )
    return (
        f"plot_loss: no loss was logged ({ran}), so no training_loss.png was written; "
        f"{fix} to plot the loss"
    )


def _smooth(points: list[tuple[int, float]], weight: float = 0.8) -> list[tuple[int, float]]:
    """Exponential moving average, debiased at the start like TensorBoard's."""
    smoothed, value = [], 0.0
    for i, (step, loss) in enumerate(points, start=1):
        value = weight * value + (1 - weight) * loss
        smoothed.append((step, value / (1 - weight**i)))
    return smoothed
