"""Evaluation during training, token accuracy, early stopping, overfitting warning, trackers."""

import functools
import json
import logging
from types import SimpleNamespace

import pytest

from conftest import FORGE_RECORD, SHORT_SFT, run_train, write_alpaca_dataset
from lmforge.errors import UserError
from lmforge.train.monitor import OverfitWarningCallback, check_trackers

train = functools.partial(run_train, preset=SHORT_SFT)


def test_eval_during_training_logs_eval_loss_and_accuracy(tmp_path, tiny_model_dir):
    run = train(
        tmp_path,
        tiny_model_dir,
        val_size=0.25,
        eval_strategy="steps",
        eval_steps=2,
        compute_accuracy=True,
        max_steps=4,
        save_steps=4,
    )
    records = [
        json.loads(x) for x in (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    ]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["current_steps"] for r in evals] == [2, 4]
    results = json.loads((run.output_dir / "all_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    assert "eval_loss" in results


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, tiny_model_dir):
    run = train(
        tmp_path,
        tiny_model_dir,
        val_size=0.25,
        eval_steps=2,
        save_steps=2,
        max_steps=6,
        early_stopping_patience=1,
    )
    state = json.loads((run.output_dir / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith(tuple(f"checkpoint-{n}" for n in (2, 4, 6)))
    assert ".staging" not in state["best_model_checkpoint"]


def test_early_stopping_needs_aligned_save_steps(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match=r"save_steps \(3\) must be a multiple of eval_steps \(2\)"):
        train(
            tmp_path,
            tiny_model_dir,
            val_size=0.25,
            eval_steps=2,
            save_steps=3,
            early_stopping_patience=1,
        )


def test_evaluation_without_eval_data_is_refused(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="no evaluation data"):
        train(tmp_path, tiny_model_dir, eval_strategy="steps")


def test_overfitting_warning_names_the_best_step(caplog):
    callback = OverfitWarningCallback(patience=2)
    state = SimpleNamespace(global_step=0, best_model_checkpoint=None)
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        for step, train_loss, eval_loss in [(10, 2.0, 1.5), (20, 1.5, 1.6), (30, 1.0, 1.8)]:
            state.global_step = step
            callback.on_log(None, state, None, logs={"loss": train_loss})
            callback.on_evaluate(None, state, None, metrics={"eval_loss": eval_loss})
    assert "Overfitting" in caplog.text
    assert "Best eval loss 1.5000 at step 10" in caplog.text


def test_missing_tracker_names_its_extra(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install 'lmforge\[tensorboard\]'"):
        check_trackers(["tensorboard"])


def test_eval_on_each_dataset_reports_each_loss(tmp_path, tiny_model_dir):
    from conftest import TOY_RECORDS, write_alpaca_dataset

    data = write_alpaca_dataset(tmp_path / "data", TOY_RECORDS, name="first")
    write_alpaca_dataset(tmp_path / "data", TOY_RECORDS[:4], name="second")
    write_alpaca_dataset(tmp_path / "data", TOY_RECORDS[4:8], name="toy")
    run = train(
        tmp_path,
        tiny_model_dir,
        dataset_dir=str(data),
        eval_dataset="first,second",
        eval_on_each_dataset=True,
        eval_strategy="steps",
        eval_steps=2,
        max_steps=2,
    )
    records = [
        json.loads(x) for x in (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    ]
    keys = {k for r in records if r["current_steps"] == 2 for k in r}
    assert {"eval_first_loss", "eval_second_loss"} <= keys
    results = json.loads((run.output_dir / "all_results.json").read_text())
    assert "eval_first_loss" in results and "eval_second_loss" in results


def overfitting_run(tmp_path, tiny_model_dir, **overrides):
    """Full tuning on one answer, evaluated on a conflicting one: train loss falls all along,
    eval loss falls, then rises (best near step 12 of 16 on the tiny model)."""
    data = write_alpaca_dataset(tmp_path / "data", [FORGE_RECORD] * 8)
    other = {"instruction": "Who are you?", "input": "", "output": "I am Qzxj, made by wvvk."}
    write_alpaca_dataset(tmp_path / "data", [other] * 2, name="held")
    return train(
        tmp_path,
        tiny_model_dir,
        dataset_dir=str(data),
        eval_dataset="held",
        eval_strategy="steps",
        eval_steps=2,
        save_steps=2,
        max_steps=16,
        finetuning_type="full",
        learning_rate=1e-2,
        **overrides,
    )


def eval_losses(run) -> dict[int, float]:
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    return {r["current_steps"]: r["eval_loss"] for r in records if "eval_loss" in r}


def test_a_real_overfitting_run_warns_and_names_the_best_checkpoint(
    tmp_path, tiny_model_dir, caplog
):
    import re
    from pathlib import Path

    with caplog.at_level(logging.WARNING, logger="lmforge"):
        run = overfitting_run(tmp_path, tiny_model_dir)
    match = re.search(
        r"Best eval loss ([\d.]+) at step (\d+) \(best checkpoint: (\S+)\)", caplog.text
    )
    assert match, caplog.text
    best_step, checkpoint = int(match.group(2)), Path(match.group(3))
    assert checkpoint == run.output_dir / f"checkpoint-{best_step}" and checkpoint.is_dir()
    losses = eval_losses(run)
    # Named when eval loss had risen twice after the best step: it was the best so far.
    assert losses[best_step] == min(v for s, v in losses.items() if s <= best_step + 4)
    assert float(match.group(1)) == pytest.approx(losses[best_step], abs=1e-4)


def test_load_best_model_at_end_saves_the_best_checkpoint_weights(tmp_path, tiny_model_dir):
    import torch

    from lmforge.model.load import load_model

    run = overfitting_run(tmp_path, tiny_model_dir, load_best_model_at_end=True)
    losses = eval_losses(run)
    best_step = min(losses, key=losses.get)
    assert best_step < 16  # the last step is not the best, so loading the best matters
    state = json.loads((run.output_dir / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    saved = load_model(run.output_dir).state_dict()
    best = load_model(run.output_dir / f"checkpoint-{best_step}").state_dict()
    last = load_model(run.output_dir / "checkpoint-16").state_dict()
    assert all(torch.equal(saved[k], best[k]) for k in saved)
    assert not all(torch.equal(saved[k], last[k]) for k in saved)


def test_load_best_model_at_end_needs_evaluation_and_aligned_steps(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="no evaluation data"):
        train(tmp_path, tiny_model_dir, load_best_model_at_end=True)
    with pytest.raises(
        UserError, match=r"load_best_model_at_end keeps the best checkpoint, so save_steps \(3\)"
    ):
        train(
            tmp_path,
            tiny_model_dir,
            load_best_model_at_end=True,
            val_size=0.25,
            eval_steps=2,
            save_steps=3,
        )


def losses_of(run) -> list[float]:
    lines = (run.output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines]


def test_neftune_gradient_checkpointing_and_transformers_optimizers(tmp_path, tiny_model_dir):
    plain = losses_of(train(tmp_path / "plain", tiny_model_dir, max_steps=4))
    # Gradient checkpointing recomputes activations: the very same numbers.
    checkpointed = losses_of(
        train(tmp_path / "gc", tiny_model_dir, max_steps=4, gradient_checkpointing=True)
    )
    assert checkpointed == pytest.approx(plain, abs=1e-6)
    # NEFTune adds noise to the embeddings in training: other losses, still learning.
    noisy = losses_of(train(tmp_path / "neft", tiny_model_dir, max_steps=4, neftune_noise_alpha=5))
    assert noisy[0] != pytest.approx(plain[0], abs=1e-4) and noisy[-1] < noisy[0] - 0.5
    # transformers' optimizers by name (`optim`), with its schedulers.
    adafactor = losses_of(
        train(
            tmp_path / "ada",
            tiny_model_dir,
            max_steps=4,
            optim="adafactor",
            lr_scheduler_type="cosine",
        )
    )
    assert adafactor[0] == pytest.approx(plain[0], abs=1e-6)  # same start, other updates
    assert adafactor[1:] != pytest.approx(plain[1:], abs=1e-3) and adafactor[-1] < adafactor[0]


def test_settings_transformers_refuses_stop_before_the_model_loads(
    tmp_path, tiny_model_dir, capsys
):
    import yaml

    from conftest import TOY_RECORDS, write_alpaca_dataset
    from lmforge.cli import main

    data = write_alpaca_dataset(tmp_path / "data", TOY_RECORDS)
    path = tmp_path / "t.yaml"
    settings = {
        "model_name_or_path": str(tiny_model_dir),
        "template": "gemma",
        "dataset": "toy",
        "dataset_dir": str(data),
        "output_dir": str(tmp_path / "out"),
        "optim": "adamw_bogus",
    }
    path.write_text(yaml.safe_dump(settings))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "transformers refused the training settings: adamw_bogus is not a valid" in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Fix: " in errors[0] and "unchanged: optim" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ---- the loss plot ---------------------------------------------------------------------------


def test_plot_loss_with_no_step_logged_says_so(tmp_path, tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        run = train(tmp_path, tiny_model_dir, max_steps=2, logging_steps=5, save_steps=2)
    assert not (run.output_dir / "training_loss.png").exists()
    assert (
        "plot_loss: no loss was logged (the run took 2 step(s) with logging_steps: 5), so no "
        "training_loss.png was written; set logging_steps to at most 2 to plot the loss"
    ) in caplog.text


def test_plot_loss_of_a_folder_without_a_log(tmp_path, caplog):
    from lmforge.train.plot import plot_loss

    with caplog.at_level(logging.WARNING, logger="lmforge"):
        assert plot_loss(tmp_path) is None
    assert (
        "plot_loss: no loss was logged (the run logged no step), so no training_loss.png was "
        "written; set logging_steps to at most the number of steps to plot the loss"
    ) in caplog.text


# ---- TensorBoard and SwanLab, as LLaMA-Factory's tutorials use them ---------------------------


def test_tensorboard_writes_to_logging_dir(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    train(tmp_path, tiny_model_dir, max_steps=2, report_to="tensorboard", logging_dir="tb/run1")
    logdir = tmp_path / "tb" / "run1"  # under the working directory: `tensorboard --logdir tb`
    events = list(logdir.glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
    assert "train/loss" in scalars


def swanlab_config(**settings):
    from lmforge.config import load_config

    return load_config(None, [f"{k}={v}" for k, v in settings.items()])


def test_swanlab_local_mode_writes_its_log_dir_offline(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("swanlab")
    monkeypatch.chdir(tmp_path)
    for name in ("SWANLAB_API_KEY", "SWANLAB_MODE", "SWANLAB_LOG_DIR", "SWANLAB_LOGDIR"):
        monkeypatch.delenv(name, raising=False)
    train(
        tmp_path,
        tiny_model_dir,
        max_steps=2,
        use_swanlab=True,
        swanlab_mode="local",
        swanlab_project="tiny",
        swanlab_run_name="run-1",
        swanlab_logdir="swanlog",
    )
    runs = list((tmp_path / "swanlog").glob("run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.log")), list((tmp_path / "swanlog").rglob("*"))


def test_swanlab_cloud_mode_offline_is_one_line(monkeypatch):
    pytest.importorskip("swanlab")
    from lmforge.train import monitor

    monkeypatch.setattr(monitor, "_reachable", lambda url, timeout=3.0: False)
    monkeypatch.delenv("SWANLAB_API_HOST", raising=False)
    with pytest.raises(UserError) as info:
        monitor.check_tracker_settings(swanlab_config(use_swanlab="true"))
    assert info.value.format() == (
        "command line: swanlab_mode: cloud needs a SwanLab login at https://api.swanlab.cn, and "
        "this machine cannot reach it (offline?). Fix: set swanlab_mode: local to keep the run "
        "on this machine (works offline; view it with `swanlab watch <swanlab_logdir>`), or "
        "connect to the internet."
    )
    # Local mode asks for neither a login nor the network.
    assert monitor.check_tracker_settings(
        swanlab_config(use_swanlab="true", swanlab_mode="local")
    ) == ["swanlab"]


def test_swanlab_cloud_mode_without_a_login_says_how_to_log_in(monkeypatch):
    pytest.importorskip("swanlab")
    from lmforge.train import monitor

    monkeypatch.setattr(monitor, "_reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(monitor, "_saved_swanlab_key", lambda: None)
    with pytest.raises(UserError) as info:
        monitor.check_tracker_settings(swanlab_config(report_to="swanlab"))
    assert info.value.format() == (
        "command line: swanlab_mode: cloud needs a SwanLab login, and none was found. Fix: run "
        "`swanlab login` once, or set swanlab_api_key (or SWANLAB_API_KEY), or set "
        "swanlab_mode: local (no account needed)."
    )


def test_trackers_lmforge_runs_itself_are_not_handed_to_transformers(monkeypatch):
    from lmforge.train import monitor

    monkeypatch.setattr(monitor, "_check_swanlab", lambda config: None)
    config = swanlab_config(report_to="tensorboard,wandb", use_swanlab="true")
    monkeypatch.setattr(monitor, "check_trackers", lambda names: None)
    assert monitor.report_to(config) == ["tensorboard", "wandb", "swanlab"]
    assert monitor.trainer_report_to(config) == ["wandb"]
    assert monitor.trainer_report_to(swanlab_config(report_to="none")) == "none"


def test_missing_swanlab_names_its_extra(monkeypatch):
    import importlib.util

    from lmforge.train import monitor

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError) as info:
        monitor.check_tracker_settings(swanlab_config(use_swanlab="true", swanlab_mode="local"))
    assert info.value.format() == (
        "report_to: swanlab needs the swanlab package. Fix: pip install 'lmforge[swanlab]'."
    )


def test_torch_profiler_writes_a_trace_and_an_operator_table(tmp_path, tiny_model_dir):
    """LLaMA-Factory's enable_torch_profiler: one cycle (wait 1, warm up 1, record 2 steps)
    gives a Chrome trace and the table of the slowest operators, in output_dir/profiler."""
    import json

    from conftest import SHORT_SFT, run_train

    run = run_train(
        tmp_path,
        tiny_model_dir,
        SHORT_SFT,
        max_steps=5,
        enable_torch_profiler=True,
        profiler_active_steps=2,
        profiler_with_stack=False,
    )
    folder = run.output_dir / "profiler" / "rank_0"
    traces = list(folder.glob("*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any(e.get("name") == "aten::mm" for e in events)
    table = (folder / "ops-step-4.txt").read_text()
    assert table.startswith("steps up to 4") and "aten::mm" in table and "Self CPU" in table
