"""Evaluation during training, token accuracy, early stopping, overfitting warning, trackers."""

import json
import logging
from types import SimpleNamespace

import pytest
from test_sft import train

from lmforge.errors import UserError
from lmforge.train.monitor import OverfitWarningCallback, check_trackers


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
