"""Tutorial 5: full SFT with DeepSpeed ZeRO-3, run as LLaMA-Factory's README says:
`FORCE_TORCHRUN=1 llamafactory-cli train examples/train_full/qwen3_full_sft.yaml` (here with
`lmforge`, plus `max_steps=2 logging_steps=1`), as a real command in a subprocess.

Without a CUDA GPU, DeepSpeed ZeRO cannot run: the answer is one paragraph saying so and how to
train without it, exit code 2, no traceback, before torchrun starts any worker. The same YAML
with `deepspeed=null` on the command line then trains two steps under torchrun on the CPU. On a
CUDA machine with deepspeed installed the YAML runs as it is."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from compat.conftest import step_losses

YAML = "examples/train_full/qwen3_full_sft.yaml"
TWO_STEPS = ["max_steps=2", "logging_steps=1"]


def lmforge_train(*args: str) -> subprocess.CompletedProcess:
    """`FORCE_TORCHRUN=1 lmforge train ARGS` in the working directory (the LLaMA-Factory folder)."""
    env = {**os.environ, "FORCE_TORCHRUN": "1", "OMP_NUM_THREADS": "1"}
    for name in ("NPROC_PER_NODE", "LMFORGE_DEBUG", "LMFORGE_USER_ERROR_FILE"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "lmforge", "train", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_deepspeed_zero3_yaml_as_the_tutorial_runs_it(llamafactory_dir):
    import torch

    result = lmforge_train(YAML, *TWO_STEPS)
    out = llamafactory_dir / "saves/qwen3-4b/full/sft"
    deepspeed_installed = importlib.util.find_spec("deepspeed") is not None
    if torch.cuda.is_available() and deepspeed_installed:
        assert result.returncode == 0, result.stderr[-3000:]
        assert (out / "model.safetensors").is_file()
        return
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "torch.distributed.run" not in result.stderr
    if torch.cuda.is_available():  # a GPU, but no deepspeed package: the last line says so
        assert result.stderr.rstrip().splitlines()[-1] == (
            "error: deepspeed is not installed. Fix: pip install 'lmforge[deepspeed]'."
        ), result.stderr[-3000:]
    else:  # the one paragraph is all that is printed; torchrun never started
        assert result.stdout == "" and result.stderr == (
            f"error: {YAML}: `deepspeed: ds_z3_config.json`: DeepSpeed ZeRO-3 needs a CUDA GPU "
            "here, and this machine has none. Fix: remove `deepspeed` to train on the CPU "
            "(FORCE_TORCHRUN=1 NPROC_PER_NODE=N still trains data-parallel over N processes), "
            "or run on a machine with an NVIDIA GPU.\n"
        )
    assert not out.exists()  # nothing written


def test_the_same_yaml_without_deepspeed_trains_two_steps(llamafactory_dir):
    result = lmforge_train(YAML, "deepspeed=null", *TWO_STEPS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.distributed.run" in result.stderr or "torchrun" in result.stderr.lower()
    out = llamafactory_dir / "saves/qwen3-4b/full/sft"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "checkpoint-2").is_dir()
    losses = step_losses(out)
    assert sorted(losses) == [1, 2], losses
    assert (out / "training_loss.png").is_file()
