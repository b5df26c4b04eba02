"""Where lmforge keeps its own files (model conversions, dataset caches)."""

from __future__ import annotations

import os
from pathlib import Path


def lmforge_home() -> Path:
    """The root of lmforge's cache: $LMFORGE_HOME, else ~/.cache/lmforge."""
    env = os.environ.get("LMFORGE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmforge"


def models_dir() -> Path:
    """Where catalogue models are converted and kept."""
    return lmforge_home() / "models"


def nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists: where a folder about to be created would be
    made, and whose disk and permissions decide whether it can be."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing
