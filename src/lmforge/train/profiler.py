"""LLaMA-Factory's `enable_torch_profiler`: torch.profiler over chosen training steps, a trace
per cycle that Perfetto (ui.perfetto.dev), chrome://tracing or TensorBoard open, and beside it
a table of the operators that took the time (ops-step-N.txt), readable without a viewer.

Traces go to profiler_output_dir, else output_dir/profiler, one folder per process (rank_N).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

TABLE_ROWS = 40


@dataclass(frozen=True)
class ProfilerSettings:
    folder: Path
    wait: int = 1
    warmup: int = 1
    active: int = 1
    repeat: int = 1
    record_shapes: bool = True
    profile_memory: bool = True
    with_stack: bool = True

    @classmethod
    def of(cls, train) -> ProfilerSettings | None:
        """From TrainConfig's profiler keys; None unless enable_torch_profiler."""
        if not train.enable_torch_profiler:
            return None
        folder = Path(train.profiler_output_dir or Path(train.output_dir) / "profiler")
        return cls(
            folder=folder,
            wait=train.profiler_wait_steps,
            warmup=train.profiler_warmup_steps,
            active=train.profiler_active_steps,
            repeat=train.profiler_repeat,
            record_shapes=train.profiler_record_shapes,
            profile_memory=train.profiler_profile_memory,
            with_stack=train.profiler_with_stack,
        )


class TorchProfilerCallback(TrainerCallback):
    def __init__(self, settings: ProfilerSettings):
        self.settings = settings
        self.profiler: torch.profiler.profile | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        s = self.settings
        rank = args.process_index
        folder = s.folder / f"rank_{rank}"
        folder.mkdir(parents=True, exist_ok=True)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        trace = torch.profiler.tensorboard_trace_handler(str(folder), worker_name=f"rank_{rank}")
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"

        def ready(profiler) -> None:
            trace(profiler)
            table = profiler.key_averages().table(sort_by=sort, row_limit=TABLE_ROWS)
            step = state.global_step
            (folder / f"ops-step-{step}.txt").write_text(f"steps up to {step}\n\n{table}\n")
            logger.info("torch profiler: trace and ops-step-%d.txt in %s", step, folder)

        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(
                wait=s.wait, warmup=s.warmup, active=s.active, repeat=s.repeat
            ),
            on_trace_ready=ready,
            record_shapes=s.record_shapes,
            profile_memory=s.profile_memory,
            with_stack=s.with_stack,
        )
        self.profiler.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None:
            self.profiler.step()

    def on_train_end(self, args, state, control, **kwargs):
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
