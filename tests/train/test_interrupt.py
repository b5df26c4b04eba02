"""Ctrl-C saves: the pieces (the end-to-end run, with SIGINT and the resume, is in
test_resume_kill.py). The first signal asks for a save at the step boundary, a repeat within
a second is the same Ctrl-C (torchrun forwards it), a later one quits at once; every rank stops
at the same step; the printed command resumes the same run."""

import signal
import types

import pytest
import torch

from lmforge.train import interrupt
from lmforge.train.interrupt import (
    InterruptCallback,
    raise_if_interrupted,
    resume_command,
    signal_handlers,
)


class Control:
    should_save = False
    should_training_stop = False


ONE_PROCESS = types.SimpleNamespace(world_size=1)


def test_first_signal_stops_at_the_step_boundary_with_a_save(monkeypatch):
    said = []
    monkeypatch.setattr(interrupt, "_say", said.append)
    callback = InterruptCallback()
    state = types.SimpleNamespace(global_step=3)
    control = callback.on_step_end(ONE_PROCESS, state, Control())
    assert not control.should_save and callback.stopped_at is None

    callback.handle(signal.SIGINT)  # mid-step: only a flag
    assert said == [
        "SIGINT: stopping after this step to save a checkpoint (press Ctrl-C again to quit at "
        "once, without saving)"
    ]
    state.global_step = 4
    control = callback.on_step_end(ONE_PROCESS, state, Control())
    assert control.should_save and control.should_training_stop
    assert callback.stopped_at == 4


def test_a_second_signal_quits_at_once_but_not_a_forwarded_copy(monkeypatch):
    said, now = [], [100.0]
    monkeypatch.setattr(interrupt, "_say", said.append)
    monkeypatch.setattr(interrupt.time, "monotonic", lambda: now[0])

    def exit_now(code):
        raise SystemExit(code)

    monkeypatch.setattr(interrupt.os, "_exit", exit_now)
    callback = InterruptCallback()
    callback.handle(signal.SIGTERM)
    now[0] += 0.2
    callback.handle(signal.SIGINT)  # torchrun forwarding the same Ctrl-C: ignored
    assert len(said) == 1
    now[0] += 2
    with pytest.raises(SystemExit) as exited:
        callback.handle(signal.SIGINT)
    assert exited.value.code == 130
    assert said[-1] == "SIGINT again: quitting without saving"


def test_handlers_are_restored_after_training_even_when_it_fails():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    callback = InterruptCallback()
    with pytest.raises(RuntimeError):
        with signal_handlers(callback):
            assert signal.getsignal(signal.SIGINT) == callback.handle
            assert signal.getsignal(signal.SIGTERM) == callback.handle
            raise RuntimeError("training failed")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_resume_command():
    config = types.SimpleNamespace(source="cfg/run.yaml", path="cfg/run.yaml")
    assert resume_command(config, ["train", "cfg/run.yaml"]) == (
        "lmforge train cfg/run.yaml resume_from_checkpoint=auto"
    )
    argv = [
        "--debug",
        "train",
        "my run.yaml",
        "learning_rate=1e-4",
        "resume_from_checkpoint=false",
        "--resume_from_checkpoint",
        "out/checkpoint-3",
        "--max-steps",
        "9",
    ]
    assert resume_command(config, argv) == (
        "lmforge --debug train 'my run.yaml' learning_rate=1e-4 --max-steps 9 "
        "resume_from_checkpoint=auto"
    )
    # Not started from the command line (the Python API): the config file.
    assert resume_command(config, ["-q", "tests"]) == (
        "lmforge train cfg/run.yaml resume_from_checkpoint=auto"
    )


def test_no_interrupt_or_one_at_the_last_step_finishes_normally():
    trainer = types.SimpleNamespace(
        interrupt=InterruptCallback(), state=types.SimpleNamespace(max_steps=6)
    )
    raise_if_interrupted(trainer, None)
    trainer.interrupt.stopped_at = 6  # the signal landed in the last step: the run is complete
    raise_if_interrupted(trainer, None)


def _rank(rank, init_file, stops):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    callback = InterruptCallback()
    args = types.SimpleNamespace(world_size=2, device=torch.device("cpu"))
    state = types.SimpleNamespace(global_step=0)
    for step in range(1, 10):
        if rank == 1 and step == 3:
            callback.signum = signal.SIGINT  # only rank 1 got the signal, during step 3
        state.global_step = step
        if callback.on_step_end(args, state, Control()).should_training_stop:
            break
    stops[rank] = callback.stopped_at
    dist.destroy_process_group()


def test_every_rank_stops_at_the_same_step(tmp_path):
    import torch.multiprocessing as mp

    stops = mp.get_context("fork").Manager().dict()
    mp.start_processes(
        _rank, args=(str(tmp_path / "init"), stops), nprocs=2, start_method="fork", join=True
    )
    assert dict(stops) == {0: 3, 1: 3}


def test_resume_command_of_a_flags_only_run():
    """With flags only there is no file: the command line is repeated as it was."""
    config = types.SimpleNamespace(source="command line", path=None)
    argv = ["train", "--stage", "sft", "--dataset", "toy", "--output_dir", "saves/x"]
    assert resume_command(config, argv) == (
        "lmforge train --stage sft --dataset toy --output_dir saves/x resume_from_checkpoint=auto"
    )
    assert resume_command(config, []) == "lmforge train CONFIG.yaml resume_from_checkpoint=auto"
