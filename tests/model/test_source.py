"""resolve_model: every rule, offline and fast (downloads and conversions are faked)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lmforge.errors import UserError
from lmforge.model import source
from lmforge.model.source import gguf_cache_dir, resolve_model


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private lmforge home, no hub traffic, Hugging Face hub as the default."""
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def _one_line(error: UserError) -> str:
    text = error.format()
    assert "\n" not in text
    return text


def test_local_folder_is_used_as_is(tmp_path):
    folder = _model_folder(tmp_path / "my-model")
    resolved = resolve_model(str(folder))
    assert resolved.path == folder
    assert resolved.origin == "local"
    assert resolved.catalogue_entry is None and resolved.template is None


def test_relative_local_folder(tmp_path, monkeypatch):
    _model_folder(tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("org/name").origin == "local"  # an existing folder beats a hub id


def test_converted_catalogue_folder_by_path_keeps_its_template(tmp_path):
    folder = _model_folder(tmp_path / "home" / "models" / "gemma-3-270m")
    resolved = resolve_model(str(folder))
    assert resolved.origin == "local" and resolved.template == "gemma"


def test_folder_without_config_json(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(UserError) as info:
        resolve_model(str(folder))
    text = _one_line(info.value)
    assert str(folder) in text and "no config.json" in text


def test_adapter_folder_says_how_to_use_it(tmp_path):
    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="adapter_name_or_path"):
        resolve_model(str(folder))


def test_folder_with_only_gguf_points_at_the_file(tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(UserError, match="m.gguf"):
        resolve_model(str(folder))


@pytest.mark.parametrize(
    "name", ["./nope", "../nope", "/no/such/dir", "~/no-such-model", "x.gguf", "a/b/c"]
)
def test_missing_path_is_named(name):
    with pytest.raises(UserError, match="does not exist") as info:
        resolve_model(name)
    assert f"model path {name} does not exist" in _one_line(info.value)


def test_existing_non_gguf_file(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(UserError, match="is a file"):
        resolve_model(str(weights))


def test_unknown_name_suggests_a_catalogue_model():
    with pytest.raises(UserError) as info:
        resolve_model("gemma-3-27O")
    text = _one_line(info.value)
    assert "`gemma-3-27O` not found" in text
    assert "did you mean `gemma-3-270m`?" in text
    assert "qwen2.5-0.5b-instruct" in text  # the list of catalogue names


def test_hub_id_offline_is_one_clear_line():
    with pytest.raises(UserError) as info:
        resolve_model("lmforge-tests/no-such-model")
    text = _one_line(info.value)
    assert text.startswith(
        "could not download model lmforge-tests/no-such-model from the Hugging Face hub: "
    )
    assert "HF_HUB_OFFLINE" in text and "Fix: check the model id" in text


def test_hub_id_network_failure_is_summarised(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def no_network(*args, **kwargs):
        raise LocalEntryNotFoundError(
            "Got: ConnectError: [Errno -2] Name or service not known\nAn error happened ..."
        )

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(UserError) as info:
        resolve_model("org/model", revision="v2")
    text = _one_line(info.value)
    assert "org/model (revision v2)" in text
    assert "the hub could not be reached (ConnectError: [Errno -2] Name or service" in text


def test_hub_id_download_returns_the_snapshot(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = _model_folder(tmp_path / "snapshot")
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    resolved = resolve_model("Qwen/Qwen2.5-0.5B-Instruct", revision="abc")
    assert resolved.path == snapshot and resolved.origin == "hf_hub"
    assert resolved.template == "qwen"  # known to the catalogue by its hub id
    assert calls[0][0] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert calls[0][1]["revision"] == "abc" and calls[0][1]["local_files_only"] is False


def test_hub_id_without_pull_needs_the_cache():
    with pytest.raises(UserError, match="lmforge models pull org/model"):
        resolve_model("org/model", pull=False)


def test_modelscope_without_the_package(monkeypatch):
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    monkeypatch.setitem(sys.modules, "modelscope", None)  # makes `import modelscope` fail
    with pytest.raises(UserError) as info:
        resolve_model("Qwen/Qwen2.5-0.5B-Instruct")
    assert "pip install 'lmforge[modelscope]'" in _one_line(info.value)


def test_modelscope_download(tmp_path, monkeypatch):
    import types

    calls = []
    fake = types.ModuleType("modelscope")
    fake.snapshot_download = lambda model_id, **kw: calls.append((model_id, kw)) or str(tmp_path)
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    resolved = resolve_model("qwen2.5-0.5b-instruct")  # a catalogue name with an ms_hub id
    assert resolved.origin == "catalogue" and resolved.path == tmp_path
    assert calls == [("Qwen/Qwen2.5-0.5B-Instruct", {"revision": None})]  # ModelScope's default


def test_catalogue_model_not_pulled_without_pull():
    with pytest.raises(UserError) as info:
        resolve_model("gemma-3-270m", pull=False)
    assert "run `lmforge models pull gemma-3-270m`" in _one_line(info.value)


def test_catalogue_model_already_pulled(tmp_path):
    folder = _model_folder(tmp_path / "home" / "models" / "gemma-3-270m")
    for pull in (False, True):
        resolved = resolve_model("Gemma-3-270M", pull=pull)
        assert resolved.path == folder and resolved.origin == "catalogue"
        assert resolved.template == "gemma" and resolved.catalogue_entry.name == "gemma-3-270m"


def test_hub_catalogue_entry_offline_is_one_line():
    with pytest.raises(UserError) as info:
        resolve_model("gemma-3-270m-it")
    assert "could not download model google/gemma-3-270m-it" in _one_line(info.value)


def test_gguf_file_is_converted_once(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF fake")
    calls = []

    def fake_convert(path, dest, **kwargs):
        calls.append(path)
        _model_folder(dest)
        return dest

    monkeypatch.setattr(source, "convert_gguf", fake_convert)
    with pytest.raises(UserError, match="not been converted yet"):
        resolve_model(str(gguf), pull=False)
    first = resolve_model(str(gguf))
    assert first.origin == "gguf" and first.template is None
    assert first.path.parent == tmp_path / "home" / "models"
    assert first.path.name.startswith("gguf-")
    assert resolve_model(str(gguf)).path == first.path
    assert resolve_model(str(gguf), pull=False).path == first.path
    assert len(calls) == 1


def test_gguf_cache_dir_follows_the_file(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"one")
    before = gguf_cache_dir(gguf)
    assert gguf_cache_dir(gguf) == before
    gguf.write_bytes(b"two!")  # another size
    os.utime(gguf, ns=(1, 1))
    assert gguf_cache_dir(gguf) != before


def test_empty_name():
    with pytest.raises(UserError, match="empty"):
        resolve_model("  ")
