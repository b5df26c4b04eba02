"""The board's UI strings, read from i18n_<lang>.yaml (data, not code)."""

from __future__ import annotations

import functools
from importlib import resources

import yaml

LANGUAGES = {"en": "English", "zh": "中文"}
DEFAULT = "en"


@functools.cache
def strings(lang: str) -> dict[str, str]:
    """Every string of `lang`; a key it lacks falls back to English."""
    base = _read(DEFAULT)
    return base if lang == DEFAULT else {**base, **_read(lang)}


def _read(lang: str) -> dict[str, str]:
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; known: {', '.join(LANGUAGES)}")
    text = resources.files("lmforge.webui").joinpath(f"i18n_{lang}.yaml").read_text("utf-8")
    return {str(k): str(v) for k, v in (yaml.safe_load(text) or {}).items()}


def t(key: str, lang: str = DEFAULT, **values) -> str:
    """The string `key` in `lang`, with {placeholders} filled in."""
    text = strings(lang).get(key, key)
    return text.format(**values) if values else text
