"""Broken lines and undecodable bytes in data files: every bad line reported as `file:line`,
counted right, skippable with skip_invalid; training refuses with a few of them and the count."""

import json

import pytest

from conftest import write_config
from lmforge.cli import main
from lmforge.config.schema import DataConfig
from lmforge.data.sources.load import load_splits
from lmforge.errors import UserError

GOOD = [{"instruction": f"q{i}", "output": "a"} for i in range(4)]


class Report:
    def __init__(self):
        self.records = {}


def write_jsonl(folder, lines: list[str], name: str = "toy") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "dataset_info.json").write_text(json.dumps({name: {"file_name": f"{name}.jsonl"}}))
    return str(folder)


def broken_lines() -> list[str]:
    good = [json.dumps(r) for r in GOOD]
    return [good[0], "{oops}", good[1], '{"instruction": "x",', good[2], "not json", good[3]]


def test_training_refuses_with_the_first_few_bad_lines_and_the_count(tmp_path):
    folder = write_jsonl(tmp_path, broken_lines() + ['{"instruction": 3, "output": "a"}'])
    with pytest.raises(UserError) as info:
        load_splits(DataConfig(dataset="toy", dataset_dir=folder), Report())
    message = str(info.value)
    path = tmp_path / "toy.jsonl"
    assert message.startswith(f"{path}:2: not valid JSON (Expecting property name")
    assert "(4 problems in 4 of 8 records). Next: " in message
    assert f"{path}:4: not valid JSON" in message and f"{path}:6: not valid JSON" in message
    assert "; and 1 more." in message
    assert "`skip_invalid: true` skips invalid records" in message


def test_skip_invalid_skips_malformed_lines_and_counts_them(tmp_path):
    folder = write_jsonl(tmp_path, broken_lines() + ['{"instruction": 3, "output": "a"}'])
    report = Report()
    data = DataConfig(dataset="toy", dataset_dir=folder, skip_invalid=True)
    train, _ = load_splits(data, report)
    assert [s.messages[0]["content"] for s in train] == ["q0", "q1", "q2", "q3"]
    assert report.records == {"toy": 8}
    assert report.skipped == 4
    assert report.skip_reasons == {"malformed line": 3, "wrong type": 1}
    assert report.skip_examples[0] == (
        f"{tmp_path / 'toy.jsonl'}:2: not valid JSON (Expecting property name enclosed in "
        "double quotes at column 2)"
    )


def test_streaming_skips_malformed_lines_too(tmp_path):
    folder = write_jsonl(tmp_path, broken_lines())
    report = Report()
    data = DataConfig(dataset="toy", dataset_dir=folder, streaming=True, skip_invalid=True)
    train, _ = load_splits(data, report, max_steps=2)
    assert sorted(s.messages[0]["content"] for s in train) == ["q0", "q1", "q2", "q3"]
    assert report.skipped == 3 and report.skip_reasons == {"malformed line": 3}


# ---- through the command line ---------------------------------------------------------------


def test_cli_train_and_validate_list_every_bad_line(tmp_path, tiny_model_dir, capsys):
    folder = write_jsonl(tmp_path / "data", broken_lines())
    config = str(
        write_config(tmp_path, tiny_model_dir, records=None, dataset_dir=folder, max_steps=1)
    )
    path = tmp_path / "data" / "toy.jsonl"

    assert main(["train", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:2: not valid JSON") and "Traceback" not in err
    assert "(3 problems in 3 of 7 records). Next: " in err and f"{path}:6: not valid" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()

    assert main(["data", "validate", config]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in out[:3]] == [f"{path}:2", f"{path}:4", f"{path}:6"]
    assert out[-1] == "3 problems in 3 of 7 records"


def test_cli_invalid_utf8_is_one_paragraph_with_line_and_offset(tmp_path, tiny_model_dir, capsys):
    folder = write_jsonl(tmp_path / "data", [json.dumps(GOOD[0])])
    (tmp_path / "data" / "toy.jsonl").write_bytes(b'{"instruction": "caf\xe9", "output": "a"}\n')
    config = str(
        write_config(tmp_path, tiny_model_dir, records=None, dataset_dir=folder, max_steps=1)
    )
    assert main(["train", config]) == 2
    err = capsys.readouterr().err
    assert "toy.jsonl:1: not valid UTF-8: 0xe9 at byte offset 20 (invalid continuation" in err
    assert "Fix: save the file as UTF-8" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_cli_validate_reads_utf16_and_utf32(tmp_path, tiny_model_dir, capsys, encoding):
    folder = write_jsonl(tmp_path / "data", [])
    text = "\n".join(json.dumps(r | {"output": "é"}, ensure_ascii=False) for r in GOOD)
    (tmp_path / "data" / "toy.jsonl").write_bytes(text.encode(encoding))
    config = str(
        write_config(tmp_path, tiny_model_dir, records=None, dataset_dir=folder, max_steps=1)
    )
    assert main(["data", "validate", config]) == 0
    assert capsys.readouterr().out.strip() == "no problems in 4 records"
