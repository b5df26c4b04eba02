"""Multi-process training: `lmforge train` re-executes itself under torchrun.

It does so on a machine with more than one accelerator, or when FORCE_TORCHRUN=1 (gloo on the
CPU, nccl on GPUs; transformers/accelerate pick the backend from the device). torchrun's usual
variables say how: NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT.

A user error stays one paragraph and exit code 2 under torchrun too: the launcher checks the
config before any worker starts (`preflight`), and an error a worker finds later is handed to
the launcher through a file (LMFORGE_USER_ERROR_FILE), which prints it once in place of torch
elastic's ChildFailedError traceback. Under an outside launcher (`accelerate launch`) the
workers of a launch print the same error once between them (`printed_by_another_worker`).
"""

from __future__ import annotations

import codecs
import copy
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmforge.config.schema import copies_reference_model
from lmforge.errors import UserError

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "y"}
USER_ERROR_FILE = "LMFORGE_USER_ERROR_FILE"  # set by `relaunch` for its workers


def world_size() -> int:
    """The processes of this run (torchrun's WORLD_SIZE; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_launched() -> bool:
    """True inside a process that torchrun (or accelerate/deepspeed) started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def should_relaunch() -> bool:
    if is_launched():
        return False
    if os.environ.get("FORCE_TORCHRUN", "").strip().lower() in _TRUE:
        return True
    import torch  # here, not at the top: the error path below runs without it

    return torch.cuda.device_count() > 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(cli_args: list[str]) -> list[str]:
    import torch

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


# ---- before the workers start ----------------------------------------------------------------


def check_gpu_only_settings(config, cuda: bool) -> None:
    """Settings that need a CUDA GPU, refused on a machine without one (before anything
    loads): DeepSpeed ZeRO, FSDP and flash-attention 2."""
    if cuda:
        return
    if fsdp_requested(config):
        raise UserError(
            "FSDP (accelerate's fully sharded data parallel) needs a GPU, and this machine has "
            "none (on the CPU accelerate refuses it, or trains without sharding)",
            where=config.where("fsdp") if config.passthrough.get("fsdp") else config.source,
            fix="start `lmforge train` without `accelerate launch --config_file "
            "...fsdp_config.yaml` (and without `fsdp`) to train on the CPU (FORCE_TORCHRUN=1 "
            "NPROC_PER_NODE=N trains data-parallel over N processes), or run on a machine with "
            "an NVIDIA GPU",
        )
    deepspeed = config.passthrough.get("deepspeed")
    if deepspeed:
        name = Path(deepspeed).name if isinstance(deepspeed, str) else "an inline config"
        stage = _zero_stage(deepspeed)
        zero = f"DeepSpeed ZeRO-{stage}" if stage is not None else "DeepSpeed ZeRO"
        raise UserError(
            f"`deepspeed: {name}`: {zero} needs a CUDA GPU here, and this machine has none",
            where=config.where("deepspeed"),
            fix="remove `deepspeed` to train on the CPU (FORCE_TORCHRUN=1 NPROC_PER_NODE=N "
            "still trains data-parallel over N processes), or run on a machine with an NVIDIA GPU",
        )
    if config.model.flash_attn == "fa2":
        raise UserError(
            "`flash_attn: fa2` (flash-attention 2) needs a CUDA GPU, and this machine has none",
            where=config.where("flash_attn"),
            fix="set flash_attn: auto (PyTorch's sdpa attention, which runs here)",
        )


def shards_weights(config) -> bool:
    """DeepSpeed ZeRO-3 or FSDP: each process holds a shard of every weight."""
    return fsdp_requested(config) or zero3_requested(config)


def zero3_requested(config) -> bool:
    """DeepSpeed ZeRO-3, whose weights are sharded as the model loads (FSDP's when training
    starts)."""
    deepspeed = config.passthrough.get("deepspeed")
    return bool(deepspeed) and _zero_stage(deepspeed) == 3


def fsdp_requested(config) -> bool:
    """FSDP asked for by `accelerate launch` with an FSDP config (it sets ACCELERATE_USE_FSDP
    for its workers) or by transformers' `fsdp` training argument."""
    launched_with_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in _TRUE
    return launched_with_fsdp or bool(config.passthrough.get("fsdp"))


def _zero_stage(deepspeed) -> int | None:
    """The ZeRO stage of a DeepSpeed config (a path or a mapping), if it can be read."""
    try:
        data = deepspeed if isinstance(deepspeed, dict) else json.loads(Path(deepspeed).read_text())
        stage = data.get("zero_optimization", {}).get("stage")
        return int(stage) if stage is not None else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def check_reference_copy(config) -> None:
    """A frozen reference copy cannot be made of a model ZeRO-3 sharded as it loaded."""
    if copies_reference_model(config.method) and zero3_requested(config):
        # A copy of ZeRO-3's shards is no model: their gathering still points at the policy's
        # (TRL's create_reference_model refuses it too). LLaMA-Factory loads the model again.
        deepspeed = config.passthrough["deepspeed"]
        name = Path(deepspeed).name if isinstance(deepspeed, str) else "an inline config"
        raise UserError(
            f"stage {config.method.stage} compares the model with a frozen copy of it, and "
            f"`deepspeed: {name}` is ZeRO-3, which shards every weight as the model loads, so "
            "no whole copy can be made",
            where=config.where("deepspeed"),
            fix=f"set ref_model: {config.model.model_name_or_path} (the reference is then "
            "loaded on its own and sharded the same way), or use ZeRO-2 "
            "(examples/deepspeed/ds_z2_config.json), or finetuning_type: lora (the reference is "
            "then the base, no copy)",
        )


def preflight(config) -> None:
    """The checks a worker would make before loading the model, made once in the launcher so
    that a user error is one paragraph (exit code 2) before torchrun starts any worker. Runs
    on a copy: the workers read the config themselves."""
    import torch

    from lmforge import device
    from lmforge.config.resolve import resolve_for_training
    from lmforge.data.sources.load import check_datasets
    from lmforge.train.monitor import check_tracker_settings
    from lmforge.train.stages import get_stage

    probe = copy.deepcopy(config)
    cuda = torch.cuda.is_available()
    check_gpu_only_settings(probe, cuda)
    check_reference_copy(probe)
    resolve_for_training(probe, bf16_supported=device.supports_bf16(), cuda=cuda)
    if probe.passthrough.get("deepspeed"):
        try:
            import deepspeed as _  # noqa: F401
        except ImportError:
            raise UserError(
                "deepspeed is not installed", fix="pip install 'lmforge[deepspeed]'"
            ) from None
    check_datasets(probe.data, probe.method.stage)
    stage = get_stage(probe.method.stage)
    stage.check(probe)
    check_tracker_settings(probe)


# ---- running the workers ---------------------------------------------------------------------


def relaunch(cli_args: list[str]) -> int:
    """Run `lmforge CLI_ARGS` under torchrun; torchrun's exit code. A user error in a worker
    is raised here as that UserError (one paragraph, exit code 2), and torch elastic's
    traceback about the failed worker is not shown."""
    command = torchrun_command(cli_args)
    logger.info("Launching under torchrun: %s", " ".join(command))
    with tempfile.TemporaryDirectory(prefix="lmforge-launch-") as folder:
        marker = os.path.join(folder, "user_error")
        # The children must not launch again, and report user errors to `marker`.
        env = {**os.environ, "FORCE_TORCHRUN": "0", USER_ERROR_FILE: marker}
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        try:
            _forward_stderr(process, lambda: _worker_error(folder) is not None)
            code = process.wait()
        except KeyboardInterrupt:
            process.wait()  # torchrun passes the interrupt on to its workers
            raise
        error = _worker_error(folder)
    if error is not None:
        raise error
    return code


def _forward_stderr(process: subprocess.Popen, stop) -> None:
    """Copy the workers' and torchrun's stderr to ours as it comes (progress bars included),
    until `stop()`: after a worker's user error, the rest is torchrun's report of the failed
    worker (and the other workers' reactions), which the error replaces."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = process.stderr.fileno()
    stopped = False
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        stopped = stopped or stop()
        if not stopped:
            sys.stderr.write(decoder.decode(chunk))
            sys.stderr.flush()
    process.stderr.close()


def report_user_error(error: UserError) -> bool:
    """In a worker started by `relaunch`: leave the error for the launcher to print once;
    True when it was left (the worker then prints nothing and exits with code 2)."""
    marker = os.environ.get(USER_ERROR_FILE)
    if not marker or not is_launched():
        return False
    data = {"what": error.what, "where": error.where, "fix": error.fix}
    path = Path(f"{marker}.{os.environ.get('RANK', '0')}")
    try:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)  # whole, or not at all
    except OSError:
        return False
    return True


_SAME_LAUNCH_S = 120  # workers of one launch meet the same error within seconds of each other


def printed_by_another_worker(error: UserError) -> bool:
    """In a worker that an outside launcher started (`accelerate launch`, torchrun, deepspeed):
    True when another worker of this launch on this machine has already printed the same
    error, so that one paragraph is not printed once per GPU. The workers of one launch share
    their parent (the launcher's agent); a different error is still printed by its worker."""
    if not is_launched():
        return False
    digest = hashlib.sha256(error.format().encode("utf-8")).hexdigest()[:16]
    user = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(tempfile.gettempdir()) / f"lmforge-{user}-worker-errors"
    path = folder / f"{os.getppid()}-{digest}"
    try:
        folder.mkdir(exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        try:
            if time.time() - path.stat().st_mtime < _SAME_LAUNCH_S:
                return True
            os.utime(path)  # left by an earlier launch whose agent had the same pid
        except OSError:
            pass
        return False
    except OSError:
        return False
    return False


def _worker_error(folder: str) -> UserError | None:
    """The user error of the lowest rank that reported one, or None."""
    found = []
    for path in Path(folder).glob("user_error.*"):
        rank = path.name.rsplit(".", 1)[-1]
        if rank.isdigit():
            found.append((int(rank), path))
    for _, path in sorted(found):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return UserError(data["what"], where=data.get("where"), fix=data.get("fix"))
    return None


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
