"""Resume is exact or refuses: a finished run is left alone; a checkpoint without its optimizer
or scheduler state, or with a damaged file, is refused when named and skipped (with a note) by
`auto`; save_only_model resumes the weights only and says so; the final train_loss of a resumed
run is the whole run's."""

import json
import math
import shutil

import pytest
from safetensors.torch import load_file

from conftest import write_config
from lmforge.cli import main
from lmforge.train.checkpoints import (
    LOSS_STATE,
    checkpoint_problem,
    planned_steps,
    safetensors_problem,
)

SETTINGS = {
    "finetuning_type": "lora",
    "learning_rate": 1e-3,
    "lr_scheduler_type": "constant",  # a step past the end would still change the adapter
    "per_device_train_batch_size": 2,
    "max_steps": 6,
    "logging_steps": 1,
    "save_steps": 2,
    "resume_from_checkpoint": "auto",
}
"""Six LoRA steps on TOY_RECORDS, a checkpoint every 2, into folder/out; `auto` resumes."""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    """A LoRA run of 6 steps with checkpoints 2, 4 and 6, trained to the end."""
    folder = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_HOME", str(tmp_path_factory.getbasetemp() / "lmforge-home"))
        assert main(["train", str(write_config(folder, tiny_model_dir, SETTINGS))]) == 0
    return folder / "out"


@pytest.fixture
def run(tmp_path, tiny_model_dir, finished, capsys):
    """A copy of the finished run in tmp_path/out, and a function that trains on it."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)

    def train(*extra, **changes):
        path = write_config(tmp_path, tiny_model_dir, SETTINGS, **changes)
        capsys.readouterr()
        code = main(["train", str(path), *extra])
        return code, capsys.readouterr().err, path

    return out, train


def snapshot(folder):
    """Every file's bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_line(err):
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def train_loss(out):
    return json.loads((out / "all_results.json").read_text())["train_loss"]


def assert_same_as(finished, out):
    a = load_file(finished / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-6, name
    steps = [json.loads(line)["current_steps"] for line in (out / "trainer_log.jsonl").open()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert abs(train_loss(finished) - train_loss(out)) < 1e-6


def truncate(path, by=100):
    data = path.read_bytes()
    path.write_bytes(data[:-by])
    return len(data) - by, len(data)


# -- a finished run ------------------------------------------------------------------------------


@pytest.mark.parametrize("explicit", [False, True])
def test_resuming_a_finished_run_changes_nothing(run, explicit):
    out, train = run
    before = snapshot(out)
    extra = [f"resume_from_checkpoint={out / 'checkpoint-6'}"] if explicit else []
    code, err, _ = train(*extra)
    assert code == 0, err
    assert (
        f"The run in {out} is complete: checkpoint-6 is at step 6 of 6, so there is nothing left "
        "to train and nothing was changed. To train longer, raise num_train_epochs or max_steps; "
        "to train again from the start, use a new output_dir or set overwrite_output_dir: true "
        "and resume_from_checkpoint: false." in err
    )
    assert snapshot(out) == before  # the adapter's bytes included
    assert "checkpoint-7" not in err and not (out / "checkpoint-7").exists()


def test_a_longer_plan_continues_a_finished_run(run):
    out, train = run
    code, err, _ = train(max_steps=8)
    assert code == 0, err
    assert f"resume from: {out}/checkpoint-6" in err
    assert (out / "checkpoint-8").is_dir()


# -- checkpoints named explicitly ----------------------------------------------------------------


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt"])
def test_a_checkpoint_without_its_optimizer_or_scheduler_is_refused(run, missing):
    out, train = run
    (out / "checkpoint-4" / missing).unlink()
    before = snapshot(out)
    code, err, path = train(f"resume_from_checkpoint={out / 'checkpoint-4'}")
    assert code == 2
    assert one_line(err) == (
        f"error: {path}: resume_from_checkpoint: {out}/checkpoint-4 has no {missing}, so "
        "resuming would restart the optimizer and the learning-rate schedule from zero instead "
        "of continuing them. Fix: resume from a checkpoint written without save_only_model, or "
        "set save_only_model: true to resume the weights only."
    )
    assert snapshot(out) == before


def damage(checkpoint, kind):
    """Damage one file of `checkpoint`; returns what the refusal says about it."""
    if kind == "adapter":
        size, full = truncate(checkpoint / "adapter_model.safetensors")
        return f"adapter_model.safetensors is truncated ({size} bytes; its header describes {full})"
    if kind == "state":
        (checkpoint / "trainer_state.json").write_text('{"global_step": 4,')
        return (
            "trainer_state.json is not valid JSON (Expecting property name enclosed in double "
            "quotes: line 1 column 19 (char 18))"
        )
    if kind == "optimizer":
        truncate(checkpoint / "optimizer.pt", by=1000)
        return "optimizer.pt is truncated or damaged (File is not a zip file)"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["adapter", "state", "optimizer"])
def test_a_damaged_checkpoint_named_explicitly_is_a_clear_error(run, kind):
    out, train = run
    said = damage(out / "checkpoint-4", kind)
    before = snapshot(out)
    code, err, path = train(f"resume_from_checkpoint={out / 'checkpoint-4'}")
    assert code == 2
    assert one_line(err) == (
        f"error: {path}: resume_from_checkpoint: {out}/checkpoint-4 cannot be resumed from: "
        f"{said}. Fix: resume from another checkpoint, or delete checkpoint-4 "
        "(resume_from_checkpoint: auto takes the newest complete one)."
    )
    assert snapshot(out) == before


# -- `auto` ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["adapter", "state", "optimizer", "no scheduler"])
def test_auto_falls_back_to_the_newest_complete_checkpoint(run, finished, kind):
    out, train = run
    if kind == "no scheduler":
        (out / "checkpoint-6" / "scheduler.pt").unlink()
        said = "scheduler.pt is missing"
    else:
        said = damage(out / "checkpoint-6", kind)
    code, err, _ = train()
    assert code == 0, err
    assert (
        f"note: resume_from_checkpoint: auto skipped checkpoint-6 ({said}); resuming from "
        "checkpoint-4" in err
    )
    assert f"resume from: {out}/checkpoint-4" in err
    assert_same_as(finished, out)  # steps 5 and 6 again, exactly; train_loss of all 6 steps


def test_auto_with_no_complete_checkpoint_refuses(run):
    out, train = run
    for step in (2, 4, 6):
        (out / f"checkpoint-{step}" / "optimizer.pt").unlink()
    code, err, path = train()
    assert code == 2
    assert one_line(err) == (
        f"error: {path}: resume_from_checkpoint: auto found no complete checkpoint in {out}: "
        f"{out}/checkpoint-6 has no optimizer.pt, so resuming would restart the optimizer and "
        "the learning-rate schedule from zero instead of continuing them (also checkpoint-4: "
        "optimizer.pt is missing; checkpoint-2: optimizer.pt is missing). Fix: resume from a "
        "checkpoint written without save_only_model, or set save_only_model: true to resume the "
        "weights only; to start over instead, set overwrite_output_dir: true and "
        "resume_from_checkpoint: false."
    )


def test_save_only_model_resumes_the_weights_and_continues_the_schedule(run):
    out, train = run
    shutil.rmtree(out / "checkpoint-6")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (out / "checkpoint-4" / name).unlink()
    code, err, _ = train("save_only_model=true", lr_scheduler_type="linear")
    assert code == 0, err
    assert (
        "note: resuming checkpoint-4 with its weights only (save_only_model: true; it has no "
        "optimizer.pt): the optimizer's moments start from zero, the learning-rate schedule "
        "continues from its step" in err
    )
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").open()]
    assert [r["current_steps"] for r in log] == [1, 2, 3, 4, 5, 6]
    # Linear decay over 6 steps: step 5 runs at 2/6 of the peak (a restarted schedule: 6/6).
    assert math.isclose(log[4]["lr"], 1e-3 * 2 / 6, rel_tol=1e-6)
    assert not (out / "checkpoint-6" / "optimizer.pt").exists()  # save_only_model checkpoints


# -- pieces ----------------------------------------------------------------------------------------


def test_checkpoints_record_the_loss_sum_and_omit_the_tokenizer(finished):
    log = [json.loads(line)["loss"] for line in (finished / "trainer_log.jsonl").open()]
    for step in (2, 4, 6):
        saved = json.loads((finished / f"checkpoint-{step}" / LOSS_STATE).read_text())
        assert saved["global_step"] == step
        assert abs(saved["train_loss_sum"] - sum(log[:step])) < 1e-5
        assert not any((finished / f"checkpoint-{step}").glob("tokenizer*"))
    assert (finished / "tokenizer.json").is_file()


def test_a_whole_checkpoint_has_no_problem(finished):
    for step in (2, 4, 6):
        assert checkpoint_problem(finished / f"checkpoint-{step}") is None


def test_safetensors_check(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(10), "b": torch.ones(3, 4)}, path)
    assert safetensors_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data[:5])
    assert safetensors_problem(path) == "is truncated (5 bytes)"
    path.write_bytes(data[:20])
    assert safetensors_problem(path) == "is truncated (20 bytes, shorter than its header)"
    path.write_bytes(data + b"x")
    assert (
        safetensors_problem(path)
        == f"is truncated ({len(data) + 1} bytes; its header describes {len(data)})"
    )


@pytest.mark.parametrize(
    "rows, batch, accumulation, epochs, max_steps",
    [(16, 2, 1, 2, -1), (16, 2, 3, 2, -1), (15, 4, 2, 1.5, -1), (16, 2, 1, 2, 5), (3, 8, 4, 3, -1)],
)
def test_planned_steps_match_transformers(tmp_path, rows, batch, accumulation, epochs, max_steps):
    import torch
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=epochs,
        max_steps=max_steps,
        use_cpu=True,
        report_to="none",
    )
    trainer = Trainer(model=torch.nn.Linear(2, 2), args=args, train_dataset=[{"x": 0}] * rows)
    expected = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    assert planned_steps(args, rows) == expected
