"""Hub datasets: no hub is reachable in tests, so the download function is replaced, or the
real `datasets` runs in offline mode and must fail with one clear error."""

import json

import pytest

from lmforge.config.schema import DataConfig
from lmforge.data.sources import hub
from lmforge.data.sources.load import load_splits
from lmforge.data.sources.registry import resolve_datasets
from lmforge.errors import UserError


def write_info(tmp_path, entries: dict):
    (tmp_path / "dataset_info.json").write_text(json.dumps(entries))
    return tmp_path


class Report:
    def __init__(self):
        self.records = {}


def test_hf_hub_entry_passes_subset_split_folder_revision(tmp_path, monkeypatch):
    calls = []

    def fake_load(**kwargs):
        calls.append(kwargs)
        return [{"instruction": "Q", "output": "A"}, {"instruction": "Q2", "output": "A2"}]

    monkeypatch.setattr(hub, "hf_load_dataset", fake_load)
    entry = {
        "hf_hub_url": "org/data",
        "subset": "en",
        "split": "validation",
        "folder": "python",
        "revision": "v1",
    }
    data = DataConfig(dataset="remote", dataset_dir=str(write_info(tmp_path, {"remote": entry})))
    train, _ = load_splits(data, Report())
    assert calls == [
        {
            "path": "org/data",
            "name": "en",
            "data_dir": "python",
            "split": "validation",
            "revision": "v1",
            "streaming": False,
        }
    ]
    assert [s.messages[-1]["content"] for s in train] == ["A", "A2"]
    assert train[1].where == "hf:org/data/en[validation]:record 1"


def test_streaming_passes_streaming_to_the_hub(tmp_path, monkeypatch):
    seen = {}

    def fake_load(**kwargs):
        seen.update(kwargs)
        return iter([{"instruction": "Q", "output": "A"}] * 3)

    monkeypatch.setattr(hub, "hf_load_dataset", fake_load)
    folder = write_info(tmp_path, {"remote": {"hf_hub_url": "org/data"}})
    data = DataConfig(dataset="remote", dataset_dir=str(folder), streaming=True)
    train, _ = load_splits(data, Report(), max_steps=10)
    assert seen == {}  # nothing is downloaded before training reads
    assert len(list(train)) == 3 and seen["streaming"] is True


@pytest.mark.parametrize("variable", ["HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_gives_one_clear_error(tmp_path, monkeypatch, variable):
    import datasets
    import huggingface_hub.constants

    # Only the variable under test is set: the message names every offline variable it finds
    # set, so one already in the environment (HF_HUB_OFFLINE=1 in a CI job) would change it.
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = write_info(tmp_path, {"alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en"}})
    data = DataConfig(dataset="alpaca_en", dataset_dir=str(folder))
    with pytest.raises(UserError) as info:
        load_splits(data, Report())
    message = str(info.value)
    assert "cannot load `llamafactory/alpaca_en` from the Hugging Face hub" in message
    assert f"offline mode is on ({variable})" in message
    assert "dataset `alpaca_en`" in message and "file_name" in message


def test_hub_failure_names_the_dataset(tmp_path, monkeypatch):
    def failing(**kwargs):
        raise FileNotFoundError("Dataset 'org/nope' doesn't exist on the Hub")

    monkeypatch.setattr(hub, "hf_load_dataset", failing)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder = write_info(tmp_path, {"nope": {"hf_hub_url": "org/nope"}})
    with pytest.raises(UserError, match=r"cannot load `org/nope` .*FileNotFoundError: Dataset"):
        load_splits(DataConfig(dataset="nope", dataset_dir=str(folder)), Report())


def test_modelscope_is_chosen_by_env_and_needs_its_package(tmp_path, monkeypatch):
    entry = {"hf_hub_url": "org/data", "ms_hub_url": "ms/data"}
    folder = write_info(tmp_path, {"d": entry, "ms_only": {"ms_hub_url": "ms/only"}})
    (spec,) = resolve_datasets(["d"], folder)
    assert (spec.load_from, spec.hub_id) == ("hf_hub", "org/data")
    (spec,) = resolve_datasets(["ms_only"], folder)
    assert (spec.load_from, spec.hub_id) == ("ms_hub", "ms/only")
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    (spec,) = resolve_datasets(["d"], folder)
    assert (spec.load_from, spec.hub_id) == ("ms_hub", "ms/data")
    monkeypatch.setitem(__import__("sys").modules, "modelscope", None)  # not installed
    with pytest.raises(UserError, match=r"need the modelscope package.*lmforge\[modelscope\]"):
        load_splits(DataConfig(dataset="d", dataset_dir=str(folder)), Report())


def test_online_dataset_dir_reads_names_as_hub_ids(monkeypatch):
    monkeypatch.setattr(
        hub, "hf_load_dataset", lambda **kw: [{"instruction": kw["path"], "output": "A"}]
    )
    train, _ = load_splits(DataConfig(dataset="org/one", dataset_dir="ONLINE"), Report())
    assert train[0].messages[0]["content"] == "org/one"
