"""`val_size: auto` (the default held-out split) and report.md at the end of `lmforge train`."""

import pytest
import yaml

from conftest import SHORT_SFT, run_train, write_config
from lmforge.config import load_config
from lmforge.data.encoding.loader import DataReport
from lmforge.data.sources.load import load_splits
from lmforge.data.sources.mixing import auto_val_count
from lmforge.errors import UserError


def _records(n: int) -> list[dict]:
    return [{"instruction": f"Q{i}?", "input": "", "output": f"A{i}."} for i in range(n)]


@pytest.mark.parametrize("total,held", [(49, 0), (50, 8), (1000, 50), (20000, 500)])
def test_auto_split_sizes(total, held):
    assert auto_val_count(total) == held


@pytest.mark.parametrize("total,held", [(49, 0), (50, 8), (1000, 50)])
def test_auto_split_is_the_default_and_noted(tmp_path, total, held):
    config = load_config(write_config(tmp_path, "m", records=_records(total)))
    assert config.data.val_size == "auto"
    report = DataReport()
    train, evaluation = load_splits(config.data, report, seed=42)
    assert (len(train), len(evaluation)) == (total - held, held)
    if held:
        assert f"val_size: auto held out {held} of {total} records for evaluation" in report.notes[0]
    else:
        assert "val_size: auto: fewer than 50 records (49), no split" in report.notes[0]


def test_auto_counts_records_after_max_samples(tmp_path):
    config = load_config(write_config(tmp_path, "m", records=_records(1000), max_samples=60))
    train, evaluation = load_splits(config.data, DataReport(), seed=42)
    assert (len(train), len(evaluation)) == (52, 8)


def test_val_size_zero_turns_it_off_and_explicit_sizes_keep_their_meaning(tmp_path):
    for value, held in ((0, 0), (0.1, 100), (30, 30)):
        config = load_config(write_config(tmp_path, "m", records=_records(1000), val_size=value))
        _, evaluation = load_splits(config.data, DataReport(), seed=42)
        assert len(evaluation) == held


def test_auto_makes_no_split_for_rl_stages_and_streams(tmp_path):
    config = load_config(write_config(tmp_path, "m", records=_records(100)))
    _, evaluation = load_splits(config.data, DataReport(), seed=42, stage="grpo")
    assert evaluation == []
    config = load_config(write_config(tmp_path, "m", records=_records(100), streaming=True))
    report = DataReport()
    _, evaluation = load_splits(config.data, report, seed=42, max_steps=5)
    assert evaluation == [] and any("streaming" in n for n in report.notes)


def test_val_size_refuses_other_words(tmp_path):
    with pytest.raises(UserError, match="or `auto`"):
        load_config(write_config(tmp_path, "m", val_size="sometimes"))


REPORT_RUN = {**SHORT_SFT, "records": _records(60), "finetuning_type": "lora", "lora_rank": 4}


def test_report_of_a_lora_run_with_the_automatic_split(tmp_path, tiny_model_dir):
    run = run_train(tmp_path, tiny_model_dir, REPORT_RUN, eval_steps=4, save_steps=4)
    text = (run.output_dir / "report.md").read_text()
    for section in (
        "## Plan",
        "val_size: auto held out 8 of 60 records for evaluation",
        "## Losses",
        "| eval loss |",
        "## Loss plot",
        "![training loss](training_loss.png)",
        "## Over-fitting",
        "## Best checkpoint",
        "## Before and after",
        "| # | prompt | reference | base | trained |",
    ):
        assert section in text, section
    table = [line for line in text.splitlines() if line.startswith("| ") and "?" in line]
    assert len(table) == 5
    plan = yaml.safe_load((run.output_dir / "run_plan.yaml").read_text())
    assert plan["eval_strategy"] == "steps"
    assert (run.output_dir / "eval_results.json").is_file()


def test_report_compare_false_omits_the_table(tmp_path, tiny_model_dir):
    run = run_train(tmp_path, tiny_model_dir, REPORT_RUN, report_compare=False, max_steps=2)
    text = (run.output_dir / "report.md").read_text()
    assert "## Over-fitting" in text and "Before and after" not in text
