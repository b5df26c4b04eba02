"""The encoding cache: a second run with the same inputs loads instead of tokenizing, any change
that could alter the tokens encodes again, and entries are written whole or not at all."""

import json
import logging

import numpy as np
import pytest

from conftest import TOY_RECORDS, build_tiny_tokenizer, write_alpaca_dataset
from lmforge.config.schema import DataConfig
from lmforge.data.encoding import loader
from lmforge.data.encoding.loader import DataReport, SampleEncoder, encode_datasets
from lmforge.data.templates.auto import load_template
from lmforge.errors import UserError


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def config(tmp_path, records=TOY_RECORDS, **overrides) -> DataConfig:
    folder = write_alpaca_dataset(tmp_path / "data", records)
    settings = {"cutoff_len": 64, "val_size": 0, **overrides}  # every record encoded
    return DataConfig(dataset="toy", dataset_dir=str(folder), **settings)


def encode(data, tokenizer=None, template="gemma", seed=42):
    report = DataReport()
    tokenizer = tokenizer or build_tiny_tokenizer()
    bound = load_template(template, tokenizer, data)  # as model setup binds it
    train, evaluation = encode_datasets(data, bound, tokenizer, seed, report)
    return train, evaluation, report


def hit(report: DataReport) -> bool:
    return "tokenization skipped" in report.cache


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(a[i]["input_ids"], b[i]["input_ids"])
        and np.array_equal(a[i]["labels"], b[i]["labels"])
        for i in range(len(a))
    )


def test_second_run_loads_without_tokenizing(tmp_path, monkeypatch, caplog):
    data = config(tmp_path, val_size=0.25)
    first_train, first_eval, first = encode(data)
    assert not hit(first) and "encoded and cached" in first.cache

    def refuse(self, sample):
        raise AssertionError("tokenized although the cache holds this encoding")

    monkeypatch.setattr(SampleEncoder, "__call__", refuse)
    with caplog.at_level(logging.INFO, logger="lmforge"):
        train, evaluation, second = encode(data)
    assert hit(second) and "tokenization skipped" in caplog.text
    assert same(train, first_train) and same(evaluation, first_eval)
    assert (second.tokens, second.trained_tokens) == (first.tokens, first.trained_tokens)
    assert second.records == first.records and second.eval_samples == 4
    assert train.where(0) == first_train.where(0)


@pytest.mark.parametrize(
    "change",
    [
        {"cutoff_len": 32},
        {"train_on_prompt": True},
        {"mask_history": True},
        {"max_samples": 8},
        {"val_size": 0.5},
        {"default_system": "Be brief."},
    ],
)
def test_a_changed_setting_encodes_again(tmp_path, change):
    encode(config(tmp_path))
    assert not hit(encode(config(tmp_path, **change))[2])


def test_changed_data_template_tokenizer_or_seed_encode_again(tmp_path):
    encode(config(tmp_path))
    assert hit(encode(config(tmp_path))[2])
    edited = [dict(TOY_RECORDS[0], output="Something else.")] + TOY_RECORDS[1:]
    assert not hit(encode(config(tmp_path, records=edited))[2])
    data = config(tmp_path)
    encode(data)
    assert not hit(encode(data, template="chatml")[2])
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["Forge"])
    assert not hit(encode(data, tokenizer=tokenizer)[2])
    split = config(tmp_path, val_size=0.25)
    encode(split, seed=1)
    assert not hit(encode(split, seed=2)[2])  # another split is other samples


def test_runtime_settings_reuse_the_entry(tmp_path):
    encode(config(tmp_path))
    for change in ({"packing": True}, {"neat_packing": True}, {"preprocessing_num_workers": 4}):
        assert hit(encode(config(tmp_path, **change))[2]), change


def test_overwrite_cache_forces_encoding(tmp_path):
    encode(config(tmp_path))
    assert not hit(encode(config(tmp_path, overwrite_cache=True))[2])


def test_tokenized_path_holds_one_entry_and_protects_other_folders(tmp_path):
    target = tmp_path / "tokenized"
    encode(config(tmp_path, tokenized_path=str(target)))
    assert json.loads((target / "manifest.json").read_text())["sets"] == {"train": 16, "eval": 0}
    assert hit(encode(config(tmp_path, tokenized_path=str(target)))[2])
    # Other settings replace the entry in place.
    _, _, report = encode(config(tmp_path, tokenized_path=str(target), cutoff_len=32))
    assert not hit(report) and str(target) in report.cache
    assert not list(tmp_path.glob(".tokenized.*"))  # no temporary folder left behind
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an lmforge dataset cache"):
        encode(config(tmp_path, tokenized_path=str(mine)))
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_torn_entry_is_encoded_again(tmp_path, cache_home):
    encode(config(tmp_path))
    (entry,) = (cache_home / "datasets").iterdir()
    (entry / "train" / "labels.npy").write_bytes(b"garbage")
    train, _, report = encode(config(tmp_path))
    assert not hit(report) and len(train) == 16
    assert hit(encode(config(tmp_path))[2])


def test_worker_processes_encode_the_same_tokens(tmp_path, monkeypatch, caplog):
    records = [
        {"instruction": f"Question {i}?", "input": "", "output": "Answer " * (i % 7 + 1)}
        for i in range(120)
    ]
    alone, _, _ = encode(config(tmp_path, records=records))
    monkeypatch.setattr(loader, "MIN_SAMPLES_PER_WORKER", 10)
    with caplog.at_level(logging.INFO, logger="lmforge"):
        parallel, _, report = encode(
            config(tmp_path, records=records, preprocessing_num_workers=2, overwrite_cache=True)
        )
    assert "in 2 processes" in caplog.text
    assert same(parallel, alone) and report.train_samples == 120


def test_truncation_and_untrainable_samples_are_counted(tmp_path):
    records = [
        {"instruction": "Hi", "input": "", "output": "x" * 100},  # answer cut
        {"instruction": "y" * 100, "input": "", "output": "z"},  # prompt fills cutoff_len
        {"instruction": "Hi", "input": "", "output": "ok"},
    ]
    train, _, report = encode(config(tmp_path, records=records))
    assert report.truncated == 2 and report.no_target == 1 and len(train) == 2
    assert report.no_target_where == [f"{tmp_path / 'data' / 'toy.json'}:record 1"]
    assert report.tokens_lost > 100  # the cut answer and the dropped sample's overflow
    assert train.lost(0) > 0 and train.lost(1) == 0
    assert len(train[0]["input_ids"]) == 64
    cached = encode(config(tmp_path, records=records))[2]
    assert (cached.truncated, cached.tokens_lost, cached.no_target_where) == (
        2,
        report.tokens_lost,
        report.no_target_where,
    )
