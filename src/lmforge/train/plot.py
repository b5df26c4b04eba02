"""training_loss.png from trainer_log.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def plot_loss(output_dir: str | Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    records = [
        json.loads(line)
        for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()
        if line.strip()
    ]
    train = [(r["current_steps"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["current_steps"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4", alpha=0.5)
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


def _smooth(points: list[tuple[int, float]], weight: float = 0.8) -> list[tuple[int, float]]:
    """Exponential moving average, debiased at the start like TensorBoard's."""
    smoothed, value = [], 0.0
    for i, (step, loss) in enumerate(points, start=1):
        value = weight * value + (1 - weight) * loss
        smoothed.append((step, value / (1 - weight**i)))
    return smoothed
