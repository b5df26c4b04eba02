import json

import pytest

from lmforge.data.formats import to_samples
from lmforge.data.readers import read_records
from lmforge.data.registry import resolve_datasets
from lmforge.errors import UserError


def registry(tmp_path, entry: dict, records, name="d.json"):
    (tmp_path / name).write_text(
        "\n".join(json.dumps(r) for r in records)
        if name.endswith(".jsonl")
        else json.dumps(records)
    )
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": name, **entry}}))
    spec = resolve_datasets(["d"], tmp_path)[0]
    return to_samples(spec, read_records(spec.path))


def test_alpaca_with_input_system_and_history(tmp_path):
    record = {
        "instruction": "Translate",
        "input": "hello",
        "output": "bonjour",
        "system": "Be terse.",
        "history": [["Hi", "Hey"]],
    }
    entry = {
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        }
    }
    (sample,) = registry(tmp_path, entry, [record])
    assert sample.system == "Be terse."
    assert sample.messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hey"},
        {"role": "user", "content": "Translate\nhello"},
        {"role": "assistant", "content": "bonjour"},
    ]


def test_sharegpt_with_system_turn_and_custom_columns(tmp_path):
    record = {
        "conv": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q1"},
            {"from": "gpt", "value": "A1"},
        ]
    }
    (sample,) = registry(
        tmp_path, {"formatting": "sharegpt", "columns": {"messages": "conv"}}, [record], "d.jsonl"
    )
    assert sample.system == "S"
    assert sample.messages == [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
    ]


def test_sharegpt_custom_tags(tmp_path):
    record = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    entry = {
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    }
    (sample,) = registry(tmp_path, entry, [record])
    assert [m["content"] for m in sample.messages] == ["Q", "A"]


def test_sharegpt_wrong_role_order_names_record_and_fix(tmp_path):
    records = [
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {"conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]},
    ]
    with pytest.raises(UserError) as info:
        registry(tmp_path, {"formatting": "sharegpt"}, records)
    message = str(info.value)
    assert "d.json:record 1:conversations: message 0 has role 'gpt'" in message
    assert "should be user" in message


def test_unknown_formatting_is_refused(tmp_path):
    with pytest.raises(UserError, match="unknown formatting `sharegtp`"):
        registry(tmp_path, {"formatting": "sharegtp"}, [{"a": 1}])


def test_empty_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="holds no records"):
        registry(tmp_path, {}, [])
