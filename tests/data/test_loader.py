"""build_datasets: training rows packed when asked (packing or neat_packing), with the packing
efficiency in the report, and packed per-sample losses equal to unpacked ones on real data."""

import json

import numpy as np
import pytest
import torch

from conftest import TOY_RECORDS, build_tiny_model, build_tiny_tokenizer, write_alpaca_dataset
from lmforge.config.schema import DataConfig
from lmforge.data.encoding.collate import PackedCollator, PadCollator
from lmforge.data.encoding.loader import build_datasets
from lmforge.data.encoding.packing import PackedSet
from lmforge.data.inspect import inspect_data
from lmforge.data.templates.auto import load_template
from lmforge.model.packing import prepare_model_for_packing


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))


def build(tmp_path, **settings):
    folder = write_alpaca_dataset(tmp_path / "data", TOY_RECORDS)
    data = DataConfig(dataset="toy", dataset_dir=str(folder), cutoff_len=64, **settings)
    tokenizer = build_tiny_tokenizer()
    return build_datasets(data, load_template("gemma", tokenizer, data), tokenizer, seed=0)


@pytest.mark.parametrize("flag", ["packing", "neat_packing"])
def test_packing_fills_rows_and_reports_efficiency(tmp_path, flag):
    rows, _, report = build(tmp_path, **{flag: True})
    assert isinstance(rows, PackedSet)
    assert report.train_samples == 16 and report.train_rows == len(rows) < 16
    assert all(len(rows[i]["input_ids"]) <= 64 for i in range(len(rows)))
    assert sum(len(rows[i]["lengths"]) for i in range(len(rows))) == 16
    assert report.packing_efficiency == pytest.approx(report.tokens / (len(rows) * 64))
    assert any(line.startswith("packing: 16 samples in") for line in report.lines())


def test_without_packing_rows_are_samples(tmp_path):
    rows, _, report = build(tmp_path)
    assert len(rows) == report.train_rows == 16 and report.packing_efficiency is None
    assert not any(line.startswith("packing") for line in report.lines())


def test_packed_rows_train_each_sample_as_alone(tmp_path):
    rows, _, _ = build(tmp_path, packing=True)
    samples = rows.samples
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer)).eval()
    prepare_model_for_packing(model)

    def loss(batch):
        with torch.no_grad():
            return model(**batch).loss.item()

    pad = PadCollator(tokenizer.pad_token_id)
    packed = PackedCollator(tokenizer.pad_token_id)
    alone = {i: loss(pad([samples[i]])) for i in range(len(samples))}
    for r in range(len(rows)):
        for offset, index in enumerate(rows.rows[r]):
            # Mask every other sample's labels: the row's loss is then this sample's loss.
            row = rows[r]
            starts = np.cumsum([0] + row["lengths"])
            labels = np.full_like(row["labels"], -100)
            labels[starts[offset] : starts[offset + 1]] = row["labels"][
                starts[offset] : starts[offset + 1]
            ]
            assert loss(packed([{**row, "labels": labels}])) == pytest.approx(
                alone[index], abs=1e-5
            )


@pytest.mark.parametrize("packing", [False, True])
def test_streaming_encodes_while_reading(tmp_path, packing):
    folder = write_alpaca_dataset(tmp_path / "data", TOY_RECORDS)
    data = DataConfig(
        dataset="toy", dataset_dir=str(folder), cutoff_len=64, streaming=True, packing=packing
    )
    tokenizer = build_tiny_tokenizer()
    template = load_template("gemma", tokenizer, data)
    rows, evaluation, report = build_datasets(data, template, tokenizer, seed=0, max_steps=5)
    assert isinstance(rows, torch.utils.data.IterableDataset) and not len(evaluation)
    items = list(rows)
    lengths = [len(item.get("lengths", [0])) for item in items]
    assert sum(lengths) == 16 if packing else len(items) == 16
    assert all(len(item["input_ids"]) <= 64 for item in items)
    assert "not cached" in report.cache


def test_reasoning_the_template_does_not_train_is_counted_and_reported(tmp_path):
    records = [
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": a}]}
        for a in ("<think>\nadd them\n</think>\n\n4", "4", "<think>\nsum\n</think>\n\nfour")
    ]
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "r.json").write_text(json.dumps(records))
    entry = {"file_name": "r.json", "formatting": "sharegpt"}
    (folder / "dataset_info.json").write_text(json.dumps({"r": entry}))
    tokenizer = build_tiny_tokenizer()

    def notes(template, **settings):
        data = DataConfig(
            dataset="r", dataset_dir=str(folder), cutoff_len=64, val_size=0, **settings
        )
        _, _, report = build_datasets(data, load_template(template, tokenizer, data), tokenizer, 0)
        return [line for line in report.lines() if line.startswith("note: ")]

    assert notes("gemma") == [
        "note: 2 samples carry reasoning that is not trained: template `gemma` has no reasoning "
        "block; use a reasoning template (qwen3, deepseekr1; see docs/thinking.md) to train it"
    ]
    assert notes("qwen3", enable_thinking=False) == [
        "note: 2 samples carry reasoning that is not trained: enable_thinking is false; set "
        "enable_thinking: true (or null) to train it"
    ]
    assert notes("qwen3") == [] and notes("qwen3", enable_thinking=None) == []
    data = DataConfig(dataset="r", dataset_dir=str(folder), cutoff_len=64, val_size=0)
    shown = inspect_data(data, load_template("gemma", tokenizer, data), tokenizer, 0, num=0)
    assert shown.stats()["notes"][0].startswith("2 samples carry reasoning that is not trained")
    assert "note: 2 samples carry reasoning" in shown.render(color=False)
