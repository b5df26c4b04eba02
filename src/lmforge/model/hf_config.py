"""transformers configs: the part that describes the text model."""

from __future__ import annotations

from typing import Any


def text_config(config: Any) -> Any:
    """The config itself, or a multimodal config's text part (transformers' get_text_config;
    a `text_config` attribute for objects without it)."""
    if hasattr(config, "get_text_config"):
        return config.get_text_config()
    return getattr(config, "text_config", None) or config
