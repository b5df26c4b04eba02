"""Under torchrun (FORCE_TORCHRUN=1) a user error is still one paragraph and exit code 2: the
launcher checks the config before any worker starts, and an error a worker finds later is
printed once by the launcher instead of torch elastic's ChildFailedError traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TOY_RECORDS, write_alpaca_dataset
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import UserError
from lmforge.train import launch
from lmforge.train.launch import check_gpu_only_settings


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


DS_Z3 = '{"zero_optimization": {"stage": 3}, "train_batch_size": "auto"}'


@pytest.fixture
def settings(tmp_path, tiny_model_dir):
    data = write_alpaca_dataset(tmp_path / "data", TOY_RECORDS)
    return {
        "model_name_or_path": str(tiny_model_dir),
        "template": "gemma",
        "dataset": "toy",
        "dataset_dir": str(data),
        "output_dir": str(tmp_path / "out"),
        "max_steps": 1,
        "ddp_timeout": 60,
    }


def write(tmp_path, settings):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_deepspeed_without_a_gpu_says_so_with_the_fix(tmp_path, settings):
    (tmp_path / "ds_z3_config.json").write_text(DS_Z3)
    path = write(tmp_path, {**settings, "deepspeed": "ds_z3_config.json"})
    config = load_config(path)
    with pytest.raises(UserError) as info:
        check_gpu_only_settings(config, cuda=False)
    assert info.value.format() == (
        f"{path}: `deepspeed: ds_z3_config.json`: DeepSpeed ZeRO-3 needs a CUDA GPU here, and "
        "this machine has none. Fix: remove `deepspeed` to train on the CPU (FORCE_TORCHRUN=1 "
        "NPROC_PER_NODE=N still trains data-parallel over N processes), or run on a machine "
        "with an NVIDIA GPU."
    )
    check_gpu_only_settings(config, cuda=True)  # fine with a GPU
    with pytest.raises(UserError, match=r"^command line: `flash_attn: fa2` \(flash-attention 2\)"):
        check_gpu_only_settings(load_config(path, ["flash_attn=fa2", "deepspeed=null"]), cuda=False)


@pytest.mark.parametrize(
    "changes, refused",
    [
        ({"stage": "dpo", "finetuning_type": "full"}, True),
        ({"stage": "kto", "finetuning_type": "freeze"}, True),
        ({"stage": "sft", "finetuning_type": "full", "use_asft_loss": True}, True),
        ({"stage": "dpo", "finetuning_type": "full", "ref_model": "MODEL"}, False),
        ({"stage": "dpo", "finetuning_type": "lora"}, False),  # the base is the reference
        ({"stage": "dpo", "finetuning_type": "full", "pref_loss": "simpo"}, False),  # none
        ({"stage": "sft", "finetuning_type": "full"}, False),
    ],
)
def test_a_reference_copy_under_zero3_is_refused_with_the_fix(tmp_path, settings, changes, refused):
    # ZeRO-3 shards each weight as the model loads: a copy of the shards is no model (TRL's
    # create_reference_model refuses it too); a ref_model is loaded and sharded on its own.
    (tmp_path / "ds_z3_config.json").write_text(DS_Z3)
    changes = {k: settings["model_name_or_path"] if v == "MODEL" else v for k, v in changes.items()}
    path = write(tmp_path, {**settings, **changes, "deepspeed": "ds_z3_config.json"})
    if not refused:
        launch.check_reference_copy(load_config(path))
        return
    with pytest.raises(UserError) as info:
        launch.check_reference_copy(load_config(path))
    stage = changes["stage"]
    assert info.value.format() == (
        f"{path}: stage {stage} compares the model with a frozen copy of it, and `deepspeed: "
        "ds_z3_config.json` is ZeRO-3, which shards every weight as the model loads, so no whole "
        f"copy can be made. Fix: set ref_model: {settings['model_name_or_path']} (the reference "
        "is then loaded on its own and sharded the same way), or use ZeRO-2 "
        "(examples/deepspeed/ds_z2_config.json), or finetuning_type: lora (the reference is "
        "then the base, no copy)."
    )
    (tmp_path / "ds_z3_config.json").write_text(DS_Z3.replace('"stage": 3', '"stage": 2'))
    launch.check_reference_copy(load_config(path))  # ZeRO-2 keeps whole weights: a copy works


FSDP_CPU = (
    "FSDP (accelerate's fully sharded data parallel) needs a GPU, and this machine has none "
    "(on the CPU accelerate refuses it, or trains without sharding). Fix: start `lmforge "
    "train` without `accelerate launch --config_file ...fsdp_config.yaml` (and without "
    "`fsdp`) to train on the CPU "
    "(FORCE_TORCHRUN=1 NPROC_PER_NODE=N trains data-parallel over N processes), or run on a "
    "machine with an NVIDIA GPU."
)


def test_fsdp_without_a_gpu_says_so_with_the_fix(tmp_path, settings, monkeypatch):
    path = write(tmp_path, settings)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    check_gpu_only_settings(load_config(path), cuda=False)  # no FSDP asked for
    with pytest.raises(UserError) as info:
        check_gpu_only_settings(load_config(path, ["fsdp=full_shard"]), cuda=False)
    assert info.value.format() == f"command line: {FSDP_CPU}"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` tells workers
    with pytest.raises(UserError) as info:
        check_gpu_only_settings(load_config(path), cuda=False)
    assert info.value.format() == f"{path}: {FSDP_CPU}"
    check_gpu_only_settings(load_config(path), cuda=True)  # fine with a GPU


@pytest.mark.skipif(torch_cuda_available(), reason="a GPU is here: FSDP runs")
def test_accelerate_launch_with_the_fsdp_example_on_the_cpu(tmp_path, settings):
    """The tutorial's command: the worker's first and only words are the paragraph (what
    follows is accelerate's own report that its worker exited with code 2)."""
    path = write(tmp_path, settings)
    config = Path(__file__).resolve().parents[2] / "examples/accelerate/fsdp_config.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
         "--config_file", str(config), "-m", "lmforge", "train", str(path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == f"error: {path}: {FSDP_CPU}"
    assert "lmforge/" not in result.stderr.split(FSDP_CPU, 1)[1]  # no frame of ours
    assert not (tmp_path / "out").exists()


def test_a_user_error_stops_the_launcher_before_torchrun(tmp_path, settings, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("DeepSpeed runs on this machine's GPU")
    (tmp_path / "ds_z3_config.json").write_text(DS_Z3)
    path = write(tmp_path, settings)
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def no_launch(args):
        raise AssertionError("torchrun must not start")

    monkeypatch.setattr(launch, "relaunch", no_launch)
    assert main(["train", str(path), "--deepspeed", str(tmp_path / "ds_z3_config.json")]) == 2
    assert capsys.readouterr().err == (
        "error: command line: `deepspeed: ds_z3_config.json`: DeepSpeed ZeRO-3 needs a CUDA GPU "
        "here, and this machine has none. Fix: remove `deepspeed` to train on the CPU "
        "(FORCE_TORCHRUN=1 NPROC_PER_NODE=N still trains data-parallel over N processes), or "
        "run on a machine with an NVIDIA GPU.\n"
    )
    # Data problems found before loading anything are caught there too.
    (tmp_path / "data" / "toy.json").unlink()
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "toy.json" in err


def test_a_worker_hands_its_user_error_to_the_launcher(tmp_path, monkeypatch):
    marker = tmp_path / "user_error"
    monkeypatch.setenv(launch.USER_ERROR_FILE, str(marker))
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert launch.report_user_error(UserError("late", where="w.yaml", fix="do x"))
    monkeypatch.setenv("RANK", "0")
    assert launch.report_user_error(UserError("first", fix="do y"))
    error = launch._worker_error(str(tmp_path))
    assert error.format() == "first. Fix: do y."  # the lowest rank's


def test_workers_of_an_outside_launcher_print_the_same_error_once(tmp_path):
    """`accelerate launch` starts the workers itself (no LMFORGE_USER_ERROR_FILE): the first
    worker of the launch prints the paragraph, the others exit with code 2 silently; a
    different error is still printed."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    env.pop(launch.USER_ERROR_FILE, None)

    def worker(rank: int, finetuning_type: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "lmforge", "train", "--finetuning_type", finetuning_type]
        worker_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        return subprocess.run(command, env=worker_env, capture_output=True, text=True)

    first, second = worker(0, "qlora"), worker(1, "qlora")
    assert (first.returncode, second.returncode) == (2, 2)
    assert first.stderr.startswith("error: command line: `finetuning_type: qlora` is not one of")
    assert second.stderr == ""
    other = worker(1, "qlora2")
    assert other.returncode == 2 and "`finetuning_type: qlora2`" in other.stderr


def test_a_worker_error_left_by_an_earlier_launch_is_printed_again(tmp_path, monkeypatch):
    """The workers of one launch share their parent's pid; a file left behind by an earlier
    launch whose agent had the same pid is older than a launch's workers are apart."""
    monkeypatch.setattr(launch.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    error = UserError("bad", fix="do x")
    assert not launch.printed_by_another_worker(error)
    assert launch.printed_by_another_worker(error)
    (left,) = tmp_path.glob("lmforge-*-worker-errors/*")
    os.utime(left, (1, 1))
    assert not launch.printed_by_another_worker(error)
    monkeypatch.delenv("LOCAL_RANK")  # not a worker: always printed
    assert not launch.printed_by_another_worker(error)


def test_an_error_found_in_the_workers_is_one_paragraph(tmp_path, settings):
    """The model folder is checked by the workers (after torchrun started them)."""
    path = write(tmp_path, {**settings, "model_name_or_path": str(tmp_path / "no-model")})
    env = {**os.environ, "FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
    env.pop(launch.USER_ERROR_FILE, None)
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "train", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "torch.distributed.run" in result.stderr  # the workers did start
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(tmp_path / "no-model") in errors[0], result.stderr
    assert "ChildFailedError" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.rstrip().endswith(errors[0])
