"""`lmforge data inspect` shows what is trained (brackets when piped, colour in a terminal) and
the statistics; `lmforge data validate` lists every bad record and exits 1."""

import json

import pytest

from conftest import OMIT, TOY_RECORDS, build_tiny_tokenizer, write_alpaca_dataset, write_config
from lmforge.cli import main
from lmforge.config.schema import DataConfig
from lmforge.data.inspect import GREEN, inspect_data, token_segments
from lmforge.data.templates.auto import load_template


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))


def inspect(tmp_path, records=TOY_RECORDS, **settings):
    folder = write_alpaca_dataset(tmp_path / "data", records)
    data = DataConfig(dataset="toy", dataset_dir=str(folder), **{"cutoff_len": 64, **settings})
    tokenizer = build_tiny_tokenizer()
    return inspect_data(data, load_template("gemma", tokenizer, data), tokenizer, 42, num=2)


def test_trained_tokens_are_bracketed_when_piped_and_green_in_a_terminal(tmp_path):
    result = inspect(tmp_path)
    first = result.samples[0]
    assert first.where.endswith("toy.json:record 0")
    text = result.render(color=False)
    assert (
        "<bos><start_of_turn>user\nWho are you?<end_of_turn>\n<start_of_turn>model\n"
        "[[I am Forge.<end_of_turn>\n]]"
    ) in text
    assert f"{first.prompt_tokens} prompt + {first.target_tokens} target tokens" in text
    assert first.target_tokens == len("I am Forge.") + 2  # the answer, <end_of_turn> and "\n"
    coloured = result.render(color=True)
    assert f"{GREEN}I am Forge.<end_of_turn>\n" in coloured and "[[" not in coloured


def test_statistics(tmp_path):
    records = TOY_RECORDS + [
        {"instruction": "Long?", "input": "", "output": "x" * 80},  # answer cut
        {"instruction": "y" * 100, "input": "", "output": "z"},  # no answer left: dropped
    ]
    result = inspect(tmp_path, records=records, packing=True, val_size=0)
    stats = result.stats()
    assert stats["records"] == {"toy": 18} and stats["train_samples"] == 17
    assert stats["duplicates"] == 12  # TOY_RECORDS is four records, four times
    assert stats["truncated"] == 2 and stats["tokens_lost"] > 0
    assert stats["no_trained_token"] == 1 and stats["notes"] == []
    assert stats["no_trained_token_examples"] == [f"{tmp_path / 'data' / 'toy.json'}:record 17"]
    assert stats["lengths"]["max"] == 64 and stats["lengths"]["p50"] < 64
    assert 0 < stats["packing"]["efficiency"] <= 1 and stats["packing"]["row_tokens"] == 64
    text = result.render(color=False)
    for expected in (
        "duplicates (identical input_ids): 12",
        "truncated at cutoff_len: 2 records",
        "no trained token (dropped from training): 1; first: ",
        "records: toy 18; train 17, eval 0",
        "p99",
    ):
        assert expected in text
    assert "efficiency" in text


def test_segments_keep_text_across_boundaries(tiny_tokenizer):
    ids = tiny_tokenizer.encode("ab cd", add_special_tokens=False)
    assert token_segments(tiny_tokenizer, ids, [False, False, True, True, True]) == [
        ("ab", False),
        (" cd", True),
    ]
    assert token_segments(tiny_tokenizer, [], []) == []


def test_cli_inspect_text_json_and_index(tmp_path, tiny_model_dir, capsys):
    path = write_config(tmp_path, tiny_model_dir, cutoff_len=64, output_dir=OMIT)
    assert main(["data", "inspect", str(path), "--num", "1"]) == 0
    out = capsys.readouterr().out
    assert "[[I am Forge.<end_of_turn>" in out and "Statistics" in out
    assert out.count("--- sample") == 1
    assert main(["data", "inspect", str(path), "--json", "--index", "2", "--num", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    (sample,) = report["samples"]
    assert sample["index"] == 2 and sample["where"].endswith("record 2")
    assert {"text": "5<end_of_turn>\n", "trained": True} in sample["segments"]
    assert report["stats"]["duplicates"] == 12
    assert main(["data", "inspect", str(path), "--index", "99"]) == 2
    assert "--index 99 is outside" in capsys.readouterr().err
    # Overrides work as for training.
    assert main(["data", "inspect", str(path), "--json", "cutoff_len=16"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["truncated"] > 0


def test_cli_validate(tmp_path, tiny_model_dir, capsys):
    path = write_config(tmp_path, tiny_model_dir, cutoff_len=64, output_dir=OMIT)
    assert main(["data", "validate", str(path)]) == 0
    assert "no problems in 16 records" in capsys.readouterr().out
    bad = TOY_RECORDS[:2] + [{"instruction": "Hi", "input": ""}, {"output": "x"}] * 30
    path = write_config(tmp_path, tiny_model_dir, records=bad, cutoff_len=64, output_dir=OMIT)
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path / 'data' / 'toy.json'}:record 2:")
    assert out[-2] == "... and 10 more" and len(out) == 52
    assert out[-1].startswith("60 problems in 60 of 62 records")
