"""The infer section: the `adapters` mapping (a dict-typed key) and serving defaults."""

from pathlib import Path

import pytest

from lmforge.config import load_config
from lmforge.errors import UserError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "infer.yaml"
    path.write_text(text)
    return path


def test_adapters_mapping_resolves_paths_next_to_the_yaml(tmp_path):
    (tmp_path / "saves" / "med").mkdir(parents=True)
    path = write(tmp_path, "adapters:\n  medical: saves/med\n  legal: /abs/legal\n")
    config = load_config(path)
    assert config.infer.adapters == {
        "medical": str((tmp_path / "saves" / "med").resolve()),
        "legal": "/abs/legal",
    }


def test_adapters_from_the_command_line(tmp_path):
    config = load_config(None, ["adapters=medical=saves/med,legal=saves/legal"])
    assert config.infer.adapters == {"medical": "saves/med", "legal": "saves/legal"}
    config = load_config(None, ["adapters={a: x}"])
    assert config.infer.adapters == {"a": "x"}


@pytest.mark.parametrize("value", ["[a, b]", "true", "justaname", "{}"])
def test_adapters_must_be_a_mapping(tmp_path, value):
    with pytest.raises(UserError, match="`adapters: .*` is not a valid mapping of names to values"):
        load_config(write(tmp_path, f"adapters: {value}\n"))


def test_serving_defaults(tmp_path):
    config = load_config(write(tmp_path, "infer_backend: vllm\n"))
    assert config.infer.infer_backend == "vllm"
    assert (config.infer.api_host, config.infer.api_port) == ("127.0.0.1", 8000)
    assert config.infer.adapters is None
    with pytest.raises(UserError, match="not one of huggingface, vllm"):
        load_config(write(tmp_path, "infer_backend: sglang\n"))
