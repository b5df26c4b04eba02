"""output_dir is checked before the model loads (under a file, not creatable, read-only, the
model's folder or inside it), a disk too small for the run's checkpoints is a warning with the
numbers, and the tokenizer is saved once per run: checkpoints omit it, and a checkpoint folder
loaded as a model or adapter still finds one."""

import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from conftest import INFERENCE, OMIT, char_ids, write_config
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.model.setup import prepare_model_setup, tokenizer_folder
from lmforge.train.output_dir import estimate_disk, human_size

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir):
    """A private copy: a test that failed to refuse must not write into the shared model."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


ONE_STEP = {"per_device_train_batch_size": 2, "max_steps": 1}


@pytest.fixture
def train(tmp_path, model_dir, capsys):
    """`lmforge train` on TOY_RECORDS (batch 2, one step) into tmp_path/out: (code, stderr, YAML)."""

    def run(*extra, **changes):
        path = write_config(tmp_path, model_dir, ONE_STEP, **changes)
        capsys.readouterr()
        code = main(["train", str(path), *extra])
        return code, capsys.readouterr().err, path

    return run


def error_line(code, err):
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def model_files(model_dir):
    return {p.name: p.read_bytes() for p in model_dir.iterdir()}


def test_output_dir_under_a_file(train, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, err, path = train(output_dir=str(tmp_path / "notes.txt" / "run"))
    assert error_line(code, err) == (
        f"error: {path}: output_dir {tmp_path}/notes.txt/run cannot be created: "
        f"{tmp_path}/notes.txt is a file. Fix: choose an output_dir whose parent folders are "
        "folders (e.g. saves/my-run)."
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_dir_inside_the_model_folder(train, model_dir, overwrite):
    before = model_files(model_dir)
    code, err, path = train(output_dir=str(model_dir / "run"), overwrite_output_dir=overwrite)
    assert error_line(code, err) == (
        f"error: {path}: output_dir {model_dir}/run is inside the model's folder ({model_dir}): "
        "training would write its checkpoints and weights over the model it reads. Fix: choose "
        "an output_dir outside the model's folder (e.g. saves/my-run); overwrite_output_dir "
        "does not change this."
    )
    assert model_files(model_dir) == before


def test_output_dir_equal_to_the_model_folder_even_with_overwrite(train, model_dir):
    before = model_files(model_dir)
    code, err, path = train(output_dir=str(model_dir), overwrite_output_dir=True)
    assert error_line(code, err) == (
        f"error: {path}: output_dir {model_dir} is the model's own folder ({model_dir}): "
        "training would write its checkpoints and weights over the model it reads. Fix: choose "
        "an output_dir outside the model's folder (e.g. saves/my-run); overwrite_output_dir "
        "does not change this."
    )
    assert model_files(model_dir) == before


def deny_writes(monkeypatch, folder):
    """Tests run as root, who may write anywhere: make `folder` read-only for the check."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == folder and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_read_only_output_dir(train, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    deny_writes(monkeypatch, out)
    code, err, path = train()
    assert error_line(code, err) == (
        f"error: {path}: output_dir {out} is not writable (a read-only folder or file system). "
        "Fix: choose an output_dir in a folder you can write to, or change the folder's "
        "permissions."
    )


def test_output_dir_that_cannot_be_created(train, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    deny_writes(monkeypatch, locked)
    code, err, path = train(output_dir=str(locked / "runs" / "a"))
    assert error_line(code, err) == (
        f"error: {path}: output_dir {locked}/runs/a cannot be created: {locked} is not "
        "writable. Fix: choose an output_dir in a folder you can write to, or change the "
        "folder's permissions."
    )
    assert not (locked / "runs").exists()


def test_too_little_disk_space_is_a_warning_with_the_numbers(train, tmp_path, monkeypatch):
    import lmforge.train.output_dir as output_dir

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(output_dir.shutil, "disk_usage", lambda _: usage(10**9, 10**9, 5000))
    code, err, _ = train(finetuning_type="full", max_steps=4, save_steps=2)
    assert code == 0, err
    from lmforge.model.load import load_model

    params = sum(p.numel() for p in load_model(tmp_path / "model").parameters())
    per_checkpoint, final = 12 * params, 4 * params  # fp32 weights + AdamW's two moments
    total = 2 * per_checkpoint + final
    assert (
        f"output_dir {tmp_path}/out: 4.9 KB free on its disk, but this run writes about "
        f"{human_size(total)} (2 checkpoint(s) of {human_size(per_checkpoint)} + the final "
        f"weights, {human_size(final)}). Lower save_total_limit, set save_only_model: true, or "
        "choose an output_dir on a larger disk." in err
    )


def test_disk_estimate():
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 2))
    model[0].requires_grad_(False)  # freeze tuning: 110 frozen, 22 trainable parameters
    estimate = estimate_disk(model, steps=10, save_steps=3, save_total_limit=None)
    assert (estimate.checkpoints, estimate.per_checkpoint, estimate.final) == (
        4,  # steps 3, 6, 9 and the last step
        132 * 4 + 22 * 8,  # every weight + two moments of each trainable one
        132 * 4,
    )
    limited = estimate_disk(model, steps=10, save_steps=3, save_total_limit=2, save_only_model=True)
    assert (limited.checkpoints, limited.per_checkpoint) == (3, 132 * 4)
    model.peft_config = {}  # an adapter: only the trainable weights are saved
    assert estimate_disk(model, steps=1, save_steps=3, save_total_limit=None).final == 22 * 4


# -- the tokenizer, once per run ------------------------------------------------------------------


def test_checkpoints_omit_the_tokenizer_and_still_load(train, tmp_path, model_dir, capsys):
    code, err, _ = train(finetuning_type="full", max_steps=2, save_steps=1, save_total_limit=None)
    assert code == 0, err
    out = tmp_path / "out"
    for name in TOKENIZER_FILES:
        assert (out / name).is_file(), name
    for step in (1, 2):
        checkpoint = out / f"checkpoint-{step}"
        assert (checkpoint / "model.safetensors").is_file()
        assert not [n for n in TOKENIZER_FILES if (checkpoint / n).exists()], step
        assert tokenizer_folder(checkpoint) == out
    assert tokenizer_folder(out) == out
    assert tokenizer_folder(model_dir) == model_dir

    chat = write_config(
        tmp_path,
        out / "checkpoint-1",
        INFERENCE,
        name="chat",
        template=OMIT,
        do_sample=False,
        max_new_tokens=3,
    )
    assert main(["chat", str(chat), "--prompt", "Name?"]) == 0
    # The run's tokenizer, not an empty one built from the checkpoint's config.json alone.
    config = load_config(None, [f"model_name_or_path={out / 'checkpoint-1'}", "template=gemma"])
    assert prepare_model_setup(config).tokenizer("hi").input_ids == char_ids("hi")


def test_an_adapter_checkpoint_loads_for_chat(train, tmp_path, model_dir, capsys):
    code, err, _ = train(finetuning_type="lora", max_steps=2, save_steps=1)
    assert code == 0, err
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert not (checkpoint / "tokenizer.json").exists()
    chat = write_config(
        tmp_path,
        model_dir,
        INFERENCE,
        name="chat",
        template=OMIT,  # from the run folder's run_config.yaml
        adapter_name_or_path=str(checkpoint),
        do_sample=False,
        max_new_tokens=3,
    )
    capsys.readouterr()
    assert main(["chat", str(chat), "--prompt", "Name?"]) == 0
    captured = capsys.readouterr()
    assert "template='gemma'" in captured.err  # taken from the run folder's run_config.yaml
