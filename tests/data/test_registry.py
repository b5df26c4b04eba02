import json

import pytest

from lmforge.data.sources.registry import inline_dataset_specs, resolve_datasets
from lmforge.errors import UserError


def info(tmp_path, entries: dict):
    (tmp_path / "d.json").write_text("[]")
    (tmp_path / "dataset_info.json").write_text(json.dumps(entries))
    return tmp_path


def test_defaults_follow_llamafactory(tmp_path):
    folder = info(
        tmp_path,
        {"a": {"file_name": "d.json"}, "s": {"file_name": "d.json", "formatting": "sharegpt"}},
    )
    alpaca, sharegpt = resolve_datasets(["a", "s"], folder)
    assert alpaca.columns == {"prompt": "instruction", "query": "input", "response": "output"}
    assert sharegpt.columns == {"messages": "conversations"}
    assert sharegpt.tags["role_tag"] == "from" and sharegpt.tags["user_tag"] == "human"
    assert (alpaca.ranking, alpaca.split, alpaca.path) == (False, "train", tmp_path / "d.json")


def test_columns_given_replace_defaults_and_tags_keep_theirs(tmp_path):
    entry = {
        "file_name": "d.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content"},
    }
    (spec,) = resolve_datasets(["k"], info(tmp_path, {"k": entry}))
    assert spec.columns == {"messages": "messages", "kto_tag": "label"} and spec.kto
    assert spec.tags["role_tag"] == "role" and spec.tags["observation_tag"] == "observation"


def test_openai_formatting_defaults(tmp_path):
    (spec,) = resolve_datasets(
        ["o"], info(tmp_path, {"o": {"file_name": "d.json", "formatting": "openai"}})
    )
    assert spec.columns == {"messages": "messages", "tools": "tools"}
    assert (spec.tags["role_tag"], spec.tags["observation_tag"]) == ("role", "tool")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"file_name": "d.json", "formatting": "sharegtp"}, "unknown formatting `sharegtp`"),
        ({"file_name": "d.json", "formating": "sharegpt"}, "unknown key `formating`"),
        ({"file_name": "d.json", "columns": {"respone": "o"}}, "unknown column key `respone`"),
        ({"file_name": "d.json", "tags": {"user": "human"}}, "unknown tag `user`"),
        ({"file_name": "d.json", "columns": {"images": "i"}}, "multimodal columns (images)"),
        ({"file_name": "d.json", "ranking": "yes"}, "`ranking` must be true or false"),
        ({"file_name": "d.json", "num_samples": 0}, "`num_samples` must be a positive"),
        ({"file_name": "missing.json"}, "missing.json does not exist"),
        ({"file_name": "*.parquet"}, "no file matches"),
        ({"script_url": "belle_multiturn"}, "`script_url` (a dataset loading script)"),
        ({"cloud_file_name": "s3://b/x.json"}, "`cloud_file_name` (s3/gcs) is not supported"),
        ({"formatting": "alpaca"}, "has no `file_name`"),
        ("d.json", "must be an object"),
    ],
)
def test_bad_entries_name_the_entry_and_the_fix(tmp_path, entry, expected):
    with pytest.raises(UserError) as info_:
        resolve_datasets(["x"], info(tmp_path, {"x": entry}))
    message = str(info_.value)
    assert expected in message
    assert "dataset_info.json: dataset `x`" in message and "Fix:" in message


def test_file_name_list_and_glob(tmp_path):
    folder = info(tmp_path, {"m": {"file_name": ["d.json", "*.json"]}})
    (spec,) = resolve_datasets(["m"], folder)
    assert spec.paths == [tmp_path / "d.json", tmp_path / "*.json"]


def test_unknown_dataset_suggests_close_names(tmp_path):
    folder = info(tmp_path, {"identity": {"file_name": "d.json"}})
    with pytest.raises(UserError, match="did you mean `identity`"):
        resolve_datasets(["identiy"], folder)


def test_missing_registry_mentions_inline_datasets(tmp_path):
    with pytest.raises(UserError, match="no dataset_info.json in .*`datasets:`"):
        resolve_datasets(["x"], tmp_path)


def test_broken_registry_names_line(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{\n  "a": {"file_name": "x.json",}\n}')
    with pytest.raises(UserError, match=r"dataset_info\.json:2:\d+: not valid JSON"):
        resolve_datasets(["a"], tmp_path)


def test_inline_specs_without_dataset_info(tmp_path):
    (tmp_path / "chat.jsonl").write_text("{}")
    mapping = {
        "chat": {"path": "chat.jsonl", "formatting": "openai"},
        "qa": {
            "file_name": str(tmp_path / "chat.jsonl"),
            "columns": {"prompt": "q", "response": "a"},
        },
    }
    chat, qa = inline_dataset_specs(mapping, tmp_path)
    assert (chat.name, chat.path, chat.formatting) == ("chat", tmp_path / "chat.jsonl", "openai")
    assert qa.columns == {"prompt": "q", "response": "a"}
    assert chat.declared_in == "config `datasets.chat`"
    # and through resolve_datasets, with no dataset_info.json in dataset_dir
    (spec,) = resolve_datasets(["chat"], tmp_path / "nowhere", mapping, tmp_path)
    assert spec.formatting == "openai"


def test_inline_entry_extends_the_registry_entry_of_the_same_name(tmp_path):
    folder = info(tmp_path, {"identity": {"file_name": "d.json"}})
    inline = {"identity": {"placeholders": {"name": "Forge", "author": "Forge Labs"}}}
    (spec,) = resolve_datasets(["identity"], folder, inline)
    assert spec.path == tmp_path / "d.json"
    assert spec.placeholders == {"name": "Forge", "author": "Forge Labs"}


def test_inline_errors(tmp_path):
    with pytest.raises(UserError, match=r"config `datasets.x`: has no `path`"):
        inline_dataset_specs({"x": {"formatting": "sharegpt"}}, tmp_path)
    with pytest.raises(UserError, match="`datasets` must be a mapping"):
        inline_dataset_specs(["x"], tmp_path)
    with pytest.raises(UserError, match=r"config `datasets.x`: data file .*nope.json does not"):
        inline_dataset_specs({"x": {"path": "nope.json"}}, tmp_path)
