"""trainer_log.jsonl: one JSON line per logging step, for people, plots and the web UI."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

from transformers import TrainerCallback

LOG_NAME = "trainer_log.jsonl"
_STAGE_METRICS = {"rewards", "eval_rewards", "reward", "kl", "eval_kl", "eval_accuracy"}


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


class JsonlLogCallback(TrainerCallback):
    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOG_NAME
        self.start_time = 0.0
        self.start_step = 0
        self.start_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = time.time()
        self.start_step = state.global_step
        self.start_tokens = state.num_input_tokens_seen
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if state.global_step == 0:
                self.path.write_text("")
            else:  # resumed: keep the lines up to the checkpoint, drop those after it
                self._truncate_after(state.global_step)

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["current_steps"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        eval_losses = {
            k: v for k, v in logs.items() if k.startswith("eval_") and k.endswith("_loss")
        }
        if not state.is_world_process_zero or not ("loss" in logs or eval_losses):
            return
        elapsed = time.time() - self.start_time
        done = state.global_step - self.start_step
        remaining = elapsed / done * (state.max_steps - state.global_step) if done else 0.0
        tokens = state.num_input_tokens_seen
        record = {
            "current_steps": state.global_step,
            "total_steps": state.max_steps,
            "loss": logs.get("loss"),
            "eval_loss": logs.get("eval_loss"),
            "lr": logs.get("learning_rate"),
            "epoch": round(state.epoch or 0.0, 4),
            "percentage": round(100 * state.global_step / max(state.max_steps, 1), 2),
            "elapsed_time": _clock(elapsed),
            "remaining_time": _clock(remaining),
            "num_tokens": tokens,
            "throughput": round((tokens - self.start_tokens) / elapsed, 2) if elapsed else 0.0,
        }
        record.update({k: v for k, v in eval_losses.items() if k != "eval_loss"})
        # Stage metrics (rewards, accuracies, KL) for people and the web UI.
        record.update({k: v for k, v in logs.items() if k.split("/")[0] in _STAGE_METRICS})
        record = {k: v for k, v in record.items() if v is not None}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
