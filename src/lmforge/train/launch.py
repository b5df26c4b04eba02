"""Multi-process training: `lmforge train` re-executes itself under torchrun.

It does so on a machine with more than one accelerator, or when FORCE_TORCHRUN=1 (gloo on the
CPU, nccl on GPUs; transformers/accelerate pick the backend from the device). torchrun's usual
variables say how: NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import torch

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "y"}


def is_launched() -> bool:
    """True inside a process that torchrun (or accelerate/deepspeed) started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def should_relaunch() -> bool:
    if is_launched():
        return False
    if os.environ.get("FORCE_TORCHRUN", "").strip().lower() in _TRUE:
        return True
    return torch.cuda.device_count() > 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(cli_args: list[str]) -> list[str]:
    nproc = os.environ.get("NPROC_PER_NODE") or str(max(torch.cuda.device_count(), 1))
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={os.environ.get('NNODES', '1')}",
        f"--node_rank={os.environ.get('NODE_RANK', '0')}",
        f"--nproc_per_node={nproc}",
        f"--master_addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
        f"--master_port={os.environ.get('MASTER_PORT') or _free_port()}",
        "-m",
        "lmforge",
        *cli_args,
    ]


def relaunch(cli_args: list[str]) -> int:
    command = torchrun_command(cli_args)
    logger.info("Launching under torchrun: %s", " ".join(command))
    env = {**os.environ, "FORCE_TORCHRUN": "0"}  # the children must not launch again
    return subprocess.run(command, env=env).returncode


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
