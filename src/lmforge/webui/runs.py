"""What the board reads from a run's output folder: progress and losses from trainer_log.jsonl
(train/callbacks.py writes it, one JSON line per logging step), and the finished runs with
their report.md. Nothing here imports `train`: the folder is the interface."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

LOG_NAME = "trainer_log.jsonl"
REPORT = "report.md"
RUN_CONFIG = "run_config.yaml"


@dataclass
class Progress:
    step: int = 0
    total: int = 0
    percentage: float = 0.0
    elapsed: str = ""
    remaining: str = ""
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, eval_loss)

    def line(self) -> str:
        if not self.total:
            return "waiting for the first logged step"
        loss = f", loss {self.train[-1][1]:.4f}" if self.train else ""
        return (
            f"step {self.step}/{self.total} ({self.percentage:.0f} %){loss}, "
            f"elapsed {self.elapsed}, remaining {self.remaining}"
        )


def read_progress(output_dir: str | Path | None) -> Progress:
    """The progress of the run writing to `output_dir` (empty when nothing is logged yet)."""
    progress = Progress()
    if not output_dir:
        return progress
    path = Path(output_dir) / LOG_NAME
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return progress
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line being written
            continue
        step = int(record.get("current_steps", 0))
        progress.step, progress.total = step, int(record.get("total_steps", 0))
        progress.percentage = float(record.get("percentage", 0.0))
        progress.elapsed = record.get("elapsed_time", "")
        progress.remaining = record.get("remaining_time", "")
        if record.get("loss") is not None:
            progress.train.append((step, float(record["loss"])))
        if record.get("eval_loss") is not None:
            progress.evals.append((step, float(record["eval_loss"])))
    return progress


def loss_figure(progress: Progress):
    """The train (and eval) loss by step as a matplotlib figure, for Gradio's Plot (its
    LinePlot takes numbers for categories under pandas 3), or None before the first step."""
    if not progress.train and not progress.evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2), layout="tight")
    ax = figure.subplots()
    if progress.train:
        marker = "o" if len(progress.train) < 20 else None
        ax.plot(*zip(*progress.train), label="train loss", color="#1f77b4", marker=marker)
    if progress.evals:
        ax.plot(*zip(*progress.evals), label="eval loss", color="#d62728", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


@dataclass(frozen=True)
class RunInfo:
    folder: Path
    state: str  # finished (report.md), interrupted (checkpoints, no report), running/other
    steps: str
    final_loss: str

    def row(self) -> list[str]:
        return [str(self.folder), self.state, self.steps, self.final_loss]


def run_info(folder: Path) -> RunInfo:
    progress = read_progress(folder)
    if (folder / REPORT).is_file():
        state = "finished"
    elif any(folder.glob("checkpoint-*")):
        state = "interrupted (resumable)"
    else:
        state = "incomplete"
    steps = f"{progress.step}/{progress.total}" if progress.total else "-"
    loss = f"{progress.train[-1][1]:.4f}" if progress.train else "-"
    return RunInfo(folder, state, steps, loss)


def find_runs(roots: list[str | Path], extra: list[str | Path] = ()) -> list[RunInfo]:
    """Run folders (holding trainer_log.jsonl or run_config.yaml) directly in `roots` (e.g.
    saves/) and the `extra` folders (the board's own jobs), newest first."""
    seen: dict[Path, None] = {}
    candidates = [Path(p) for p in extra]
    for root in roots:
        root = Path(root)
        if root.is_dir():
            candidates += [p for p in root.iterdir() if p.is_dir()]
    for folder in candidates:
        if (folder / LOG_NAME).is_file() or (folder / RUN_CONFIG).is_file():
            seen[folder.resolve()] = None
    runs = [run_info(folder) for folder in seen]
    return sorted(runs, key=lambda r: _mtime(r.folder), reverse=True)


def _mtime(folder: Path) -> float:
    try:
        return (folder / LOG_NAME).stat().st_mtime
    except OSError:
        return folder.stat().st_mtime if folder.exists() else 0.0


def read_report(folder: str | Path) -> str:
    path = Path(folder) / REPORT
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return f"No {REPORT} in {folder} (the run has not finished)."


def read_json(path: str | Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
