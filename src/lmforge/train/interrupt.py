"""Ctrl-C saves: SIGINT or SIGTERM during training stops at the next step boundary with a
checkpoint, and the command that resumes is printed.

- The first signal only sets a flag (a save never starts mid-step); at the end of the step
  InterruptCallback asks the Trainer to save (through the staged, atomic checkpoint save) and
  to stop. A second signal quits at once, without saving.
- With several processes, every rank must stop at the same step: each step the flag is
  all-reduced (one int, MAX) so a signal that reached any rank stops them all together.
- torchrun forwards the terminal's Ctrl-C to workers that already got it: signals within
  DUPLICATE_WINDOW seconds of the first count as the same one.
- Only rank 0 prints. After the save, `raise_if_interrupted` raises KeyboardInterrupt, so
  `lmforge train` ends with "interrupted" and exit code 130, and nothing after training (the
  final save in output_dir) runs.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from lmforge.train.launch import is_main_process

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
DUPLICATE_WINDOW = 1.0  # seconds


def _say(text: str) -> None:
    """From a signal handler: os.write, not print (print may be writing when the signal lands)."""
    if is_main_process():
        os.write(2, f"\n{text}\n".encode())


class InterruptCallback(TrainerCallback):
    def __init__(self):
        self.signum = 0  # the first signal received (0: none)
        self.first_at = 0.0
        self.stopped_at: int | None = None  # the step training stopped at for a signal

    def handle(self, signum, frame=None) -> None:
        now = time.monotonic()
        name = signal.Signals(signum).name
        if not self.signum:
            self.signum, self.first_at = signum, now
            _say(
                f"{name}: stopping after this step to save a checkpoint "
                "(press Ctrl-C again to quit at once, without saving)"
            )
            return
        if now - self.first_at < DUPLICATE_WINDOW:
            return  # the same interrupt, forwarded (torchrun)
        _say(f"{name} again: quitting without saving")
        sys.stderr.flush()
        os._exit(128 + signum)

    def on_train_begin(self, args, state, control, **kwargs):
        self.stopped_at = None

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(bool(self.signum), args):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


def _any_rank(flag: bool, args) -> bool:
    """True on every rank when it is true on one; one small all-reduce a step."""
    if args.world_size <= 1:
        return flag
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=args.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@contextmanager
def signal_handlers(callback: InterruptCallback):
    """SIGINT/SIGTERM go to `callback` while training; the previous handlers come back after
    (also when training fails). Signals can only be caught in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, callback.handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def raise_if_interrupted(trainer, config) -> None:
    """After trainer.train(): when a signal stopped it before the last step, say where the
    checkpoint is and how to resume, then raise KeyboardInterrupt (exit code 130)."""
    callback = getattr(trainer, "interrupt", None)
    step = getattr(callback, "stopped_at", None)
    if step is None or step >= trainer.state.max_steps:
        return  # not interrupted, or at the last step (the run is complete: finish normally)
    if trainer.is_world_process_zero():
        checkpoint = Path(trainer.args.output_dir) / f"checkpoint-{step}"
        logger.warning(
            "Interrupted: stopped at step %d of %d and saved %s. To continue, run:\n  %s",
            step,
            trainer.state.max_steps,
            checkpoint,
            resume_command(config),
        )
    _end_distributed()
    raise KeyboardInterrupt


def _end_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


_RESUME_KEY = "resume_from_checkpoint"


def resume_command(config, argv: list[str] | None = None) -> str:
    """This run's command line with `resume_from_checkpoint=auto` (any other value dropped);
    `lmforge train CONFIG resume_from_checkpoint=auto` when it was not started from the CLI."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "train" in argv:
        start = argv.index("train") + 1
        words = argv[:start] + _without_resume(argv[start:])
    else:
        words = ["train", config.path or "CONFIG.yaml"]
    return shlex.join(["lmforge", *words, f"{_RESUME_KEY}=auto"])


def _without_resume(args: list[str]) -> list[str]:
    kept, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        key = arg.lstrip("-").split("=", 1)[0].replace("-", "_")
        if key == _RESUME_KEY:
            # `--resume_from_checkpoint VALUE` takes the next word as its value
            skip = arg.startswith("--") and "=" not in arg and i + 1 < len(args)
            skip = skip and not args[i + 1].startswith("--")
            continue
        kept.append(arg)
    return kept
