"""`validate_data`: every problem of every record, as `file:record N:field: reason`."""

import json

from lmforge.config.schema import DataConfig
from lmforge.data.sources.validation import validate_data


def test_lists_every_problem_of_every_dataset(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps(
            [
                {"instruction": "Q", "output": "A"},
                {"instruction": "Q"},
                {"instruction": "", "output": ""},
            ]
        )
    )
    (tmp_path / "chat.jsonl").write_text(
        json.dumps({"conversations": [{"from": "gpt", "value": "A"}]})
        + "\n"
        + json.dumps({"conversations": [{"from": "human", "value": "Q"}]})
    )
    (tmp_path / "broken.json").write_text('[\n{"instruction": "a",\n]')
    info = {
        "a": {"file_name": "a.json"},
        "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt"},
        "broken": {"file_name": "broken.json"},
        "typo": {"file_name": "a.json", "formatting": "sharegtp"},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    data = DataConfig(
        dataset="a,chat,broken", eval_dataset="typo", dataset_dir=str(tmp_path), max_samples=1
    )
    result = validate_data(data)
    lines = [str(p) for p in result.problems]
    a, chat = tmp_path / "a.json", tmp_path / "chat.jsonl"
    assert lines[:5] == [
        f"{a}:record 1:output: missing or empty (columns present: instruction)",
        f"{a}:record 2:instruction: missing or empty (columns present: instruction, output)",
        f"{a}:record 2:output: missing or empty (columns present: instruction, output)",
        f"{chat}:record 0:conversations: message 0 has role 'gpt'",
        f"{chat}:record 1:conversations: the conversation ends with a user message, so there "
        "is no answer to train on",
    ]
    assert lines[5].startswith(f"{tmp_path / 'broken.json'}:3:1: not valid JSON")
    assert "unknown formatting `sharegtp`" in lines[6]
    assert len(lines) == 7 and not result.ok
    assert result.records == {"a": 3, "chat": 2}  # max_samples is not applied: all checked
    assert result.invalid_records == 4
    assert result.lines()[-1] == (
        "7 problems: 5 in 4 of 5 records, 2 about a whole dataset (not read, or not all of it)"
    )
    assert all(p.fix for p in result.problems)


def test_lines_show_the_first_50_and_a_count(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "Q"}] * 60))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "a.json"}}))
    result = validate_data(DataConfig(dataset="a", dataset_dir=str(tmp_path)))
    lines = result.lines()
    assert len(lines) == 52
    assert lines[50] == "... and 10 more" and lines[51] == "60 problems in 60 of 60 records"


def test_clean_data(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "Q", "output": "A"}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "a.json"}}))
    result = validate_data(DataConfig(dataset="a", dataset_dir=str(tmp_path)))
    assert result.ok and result.lines() == ["no problems in 1 record"]


def test_no_dataset_is_a_problem_not_a_crash(tmp_path):
    result = validate_data(DataConfig(dataset_dir=str(tmp_path)))
    assert "no dataset given" in str(result.problems[0])


def test_every_malformed_line_is_listed_and_counted(tmp_path):
    good = json.dumps({"instruction": "Q", "output": "A"})
    lines = [good, "{oops}", good, '{"instruction": "x",', "", json.dumps({"instruction": 5})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "a.jsonl"}}))
    result = validate_data(DataConfig(dataset="a", dataset_dir=str(tmp_path)))
    path = tmp_path / "a.jsonl"
    assert result.lines() == [
        f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:4: not valid JSON (Expecting property name enclosed in double quotes at "
        "column 21)",
        f"{path}:record 4:instruction: must be text, not a number (5)",
        f"{path}:record 4:output: missing or empty (columns present: instruction)",
        "4 problems in 3 of 5 records",
    ]
    assert all(p.fix for p in result.problems)


def test_undecodable_file_is_a_problem_naming_line_and_offset(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"instruction": "Q", "output": "A"}\n{"x": "\xff"}\n')
    (tmp_path / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "a.jsonl"}}))
    result = validate_data(DataConfig(dataset="a", dataset_dir=str(tmp_path)))
    assert result.lines() == [
        f"{tmp_path / 'a.jsonl'}:2: not valid UTF-8: 0xff at byte offset 43 (invalid start byte)",
        "1 problem, about a whole dataset (not read, or not all of it); 0 records checked",
    ]
