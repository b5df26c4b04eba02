"""Every training example runs: each YAML under examples/train_* trains two steps with its own
data and settings, only the model swapped for the tiny one (the real model runs in e2e)."""

from pathlib import Path

import pytest

from lmforge.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRAINING = sorted(EXAMPLES.glob("train_*/*.yaml"))


@pytest.mark.parametrize("path", TRAINING, ids=[f"{p.parent.name}/{p.name}" for p in TRAINING])
def test_training_example_runs(path, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "train",
            str(path),
            f"model_name_or_path={tiny_model_dir}",
            f"output_dir={out}",
            "max_steps=2",
            "save_steps=2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert (out / "trainer_log.jsonl").is_file() and (out / "run_config.yaml").is_file()
    assert (out / "checkpoint-2").is_dir()
