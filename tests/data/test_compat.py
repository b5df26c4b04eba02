"""A folder shaped like LLaMA-Factory's data/ loads unchanged with `dataset_dir` pointing at it.

tests/fixtures/llamafactory_data holds entries copied from LLaMA-Factory's dataset_info.json and
small data files of the same shapes, written for these tests.
"""

import json
import shutil
from pathlib import Path

import pytest

from lmforge.config.schema import DataConfig
from lmforge.data.sources import hub
from lmforge.data.sources.load import load_splits
from lmforge.data.sources.registry import resolve_datasets
from lmforge.data.sources.validation import validate_data
from lmforge.errors import UserError

LF_DATA = Path(__file__).parent.parent / "fixtures" / "llamafactory_data"


class Report:
    def __init__(self):
        self.records = {}


@pytest.fixture
def lf_data(tmp_path) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(LF_DATA, folder)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def load(folder: Path, names: str, stage: str, **settings):
    report = Report()
    data = DataConfig(dataset=names, dataset_dir=str(folder), **settings)
    train, evaluation = load_splits(data, report, stage=stage)
    return train, report


def test_sft_datasets_load_unchanged(lf_data):
    before = snapshot(lf_data)
    names = "identity,alpaca_en_demo,alpaca_zh_demo,glaive_toolcall_en_demo"
    train, report = load(lf_data, names, "sft")
    assert report.records == {
        "identity": 4,
        "alpaca_en_demo": 3,
        "alpaca_zh_demo": 2,
        "glaive_toolcall_en_demo": 2,
    }
    assert train[5].messages == [
        {
            "role": "user",
            "content": "Rewrite the sentence in the past tense.\nShe walks to the station.",
        },
        {"role": "assistant", "content": "She walked to the station."},
    ]
    tool_sample = train[9]
    assert tool_sample.messages[1]["tool_calls"] == [
        {"name": "calculate_area", "arguments": {"shape": "rectangle", "dimensions": [5, 3]}}
    ]
    assert tool_sample.messages[2] == {"role": "tool", "content": '{"area": 15}'}
    assert json.loads(tool_sample.tools)[0]["name"] == "calculate_area"
    assert train[10].tools is None  # "tools": "[]"
    # identity's placeholders are trained as written unless values are given, and that is said
    assert "{{name}}" in train[0].messages[1]["content"]
    assert "4 records contain placeholders ({{author}}, {{name}})" in report.notes[0]
    assert snapshot(lf_data) == before  # nothing written into the user's data folder


def test_preference_kto_and_pretraining_datasets(lf_data):
    pairs, _ = load(lf_data, "dpo_en_demo", "dpo")
    assert pairs[1].system == "You are a concise assistant."
    assert pairs[1].messages[-1] == {"role": "user", "content": "When was it published?"}
    assert (pairs[1].chosen["content"], pairs[1].rejected["content"]) == (
        "In 1813.",
        "It has not been published.",
    )
    kto, _ = load(lf_data, "kto_en_demo", "kto")
    assert [s.kto_label for s in kto] == [True, False]
    assert kto[1].messages[-1] == {"role": "assistant", "content": "5"}
    text, report = load(lf_data, "c4_demo,wiki_demo", "pt")
    assert report.records == {"c4_demo": 3, "wiki_demo": 2}
    assert text[0].text.startswith("A small bakery") and text[3].text.startswith("The river")


def test_whole_folder_validates_clean(lf_data):
    data = DataConfig(
        dataset="identity,alpaca_en_demo,alpaca_zh_demo,glaive_toolcall_en_demo",
        dataset_dir=str(lf_data),
    )
    assert validate_data(data).ok


def test_identity_placeholders_filled_from_the_config(lf_data):
    data = DataConfig(dataset="identity", dataset_dir=str(lf_data))
    data.datasets = {"identity": {"placeholders": {"name": "Forge", "author": "Forge Labs"}}}
    train, _ = load_splits(data, Report())
    assert train[1].messages[1]["content"] == "I am Forge, an AI assistant developed by Forge Labs."
    assert train[3].messages[1]["content"] == "您好，我是 Forge，一个由 Forge Labs 开发的 AI 助手。"


def test_mismatched_placeholders(lf_data, tmp_path):
    data = DataConfig(dataset="identity", dataset_dir=str(lf_data))
    data.datasets = {"identity": {"placeholders": {"name": "Forge", "auther": "Forge Labs"}}}
    with pytest.raises(UserError) as info:
        load_splits(data, Report())
    message = str(info.value)
    assert "dataset `identity`: placeholders given for auther, but no record of dataset " in (
        message
    )
    assert "the data uses: {{author}}, {{name}}" in message
    (tmp_path / "own.json").write_text(
        json.dumps([{"instruction": "hi", "output": "I am {{name}} {{version}}"}])
    )
    data.datasets = {"own": {"path": str(tmp_path / "own.json"), "placeholders": {"name": "F"}}}
    data.dataset = "own"
    with pytest.raises(UserError) as info:
        load_splits(data, Report())
    message = str(info.value)
    assert "own.json:record 0:output: placeholder {{version}} has no value" in message
    assert "add version: ... to the dataset's `placeholders`" in message


def test_hub_entries_resolve_without_network(lf_data, monkeypatch):
    alpaca, starcoder = resolve_datasets(["alpaca_en", "starcoder_python"], lf_data)
    assert (alpaca.load_from, alpaca.hub_id) == ("hf_hub", "llamafactory/alpaca_en")
    assert (starcoder.hub_id, starcoder.folder, starcoder.columns) == (
        "bigcode/starcoderdata",
        "python",
        {"prompt": "content"},
    )
    monkeypatch.setattr(hub, "hf_load_dataset", lambda **kw: [{"content": "def f(): pass"}])
    text, _ = load(lf_data, "starcoder_python", "pt")
    assert text[0].text == "def f(): pass"


def test_entries_this_version_cannot_load_say_so(lf_data):
    with pytest.raises(UserError, match="`script_url` .* is not supported"):
        load(lf_data, "belle_multiturn", "sft")
    with pytest.raises(UserError, match=r"multimodal columns \(images\) are not supported"):
        load(lf_data, "mllm_demo", "sft")
    with pytest.raises(UserError, match="preference data .* which stage sft cannot use"):
        load(lf_data, "dpo_en_demo", "sft")
    with pytest.raises(UserError, match=r"maps no response column.*stage: pt"):
        load(lf_data, "c4_demo", "sft")
