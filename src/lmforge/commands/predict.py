"""`lmforge predict CONFIG.yaml`: generate answers for a dataset and score them (BLEU, ROUGE)."""

from __future__ import annotations


def predict(path: str | None, overrides: list[str]) -> str:
    from lmforge.config import load_config
    from lmforge.evaluate.predict import PREDICTIONS_FILE, RESULTS_FILE, run_prediction

    outcome = run_prediction(load_config(path, overrides))
    shown = {k: v for k, v in outcome.metrics.items() if v is not None}
    lines = [f"{outcome.count} answers generated"]
    lines += [f"  {key:<30}{value}" for key, value in shown.items()]
    lines.append(f"written: {outcome.folder / PREDICTIONS_FILE}, {outcome.folder / RESULTS_FILE}")
    return "\n".join(lines)
