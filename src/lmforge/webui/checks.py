"""Paths typed into the board, checked before a job starts: inputs exist and are readable,
the output folder can be written and is not the model's folder (nor inside it).

The commands check again when they run (config/load.py, train/output_dir.py); these checks
only let the board refuse at once, next to the field, instead of after a subprocess starts.
Names that are not paths (a catalogue model, a hub id) are left to the command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lmforge.paths import nearest_existing

# Input keys checked to exist; each may hold several comma-separated paths.
INPUT_KEYS = (
    "model_name_or_path",
    "adapter_name_or_path",
    "dataset_dir",
    "ref_model",
    "ref_model_adapters",
    "reward_model",
    "compare_adapters",
    "prompts",
    "deepspeed",
)
OUTPUT_KEYS = ("output_dir", "export_dir", "save_dir")


def _is_name(key: str, value: str, base: Path | None) -> bool:
    """A value that names a model rather than a path: a catalogue name or a hub id."""
    if key not in ("model_name_or_path", "ref_model") or _resolve(value, base).exists():
        return False
    if "/" not in value and os.sep not in value:
        return True  # a catalogue name (the command checks it)
    from lmforge.model.catalogue import looks_like_hub_id

    return looks_like_hub_id(value)


def _resolve(value: str, base: Path | None) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def check_input(key: str, value: str, base: Path | None = None) -> list[str]:
    problems = []
    for part in [p.strip() for p in str(value).split(",") if p.strip()]:
        if _is_name(key, part, base):
            continue
        path = _resolve(part, base)
        if not path.exists():
            problems.append(f"{key}: {part} does not exist")
        elif not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
            problems.append(f"{key}: {part} is not readable")
    return problems


def check_output(key: str, value: str, model: str | None, base: Path | None = None) -> list[str]:
    output = _resolve(value, base).absolute()
    existing = nearest_existing(output)
    if existing == output and not output.is_dir():
        return [f"{key}: {value} is a file, not a folder"]
    if existing != output and not existing.is_dir():
        return [f"{key}: {value} cannot be created: {existing} is a file"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{key}: {value} cannot be written ({existing} is read-only)"]
    if model:
        model_dir = _resolve(model, base)
        if model_dir.is_dir():
            model_dir, real = model_dir.resolve(), output.resolve()
            if real == model_dir or model_dir in real.parents:
                return [
                    f"{key}: {value} is the model's folder or inside it ({model_dir}): the job "
                    "would write over the model it reads; choose another folder (e.g. saves/my-run)"
                ]
    return []


def check_paths(settings: dict[str, Any], base: str | Path | None = None) -> list[str]:
    """Every problem with the paths in a flat settings mapping (empty: all good)."""
    base = Path(base) if base is not None else None
    problems: list[str] = []
    for key in INPUT_KEYS:
        if settings.get(key):
            problems += check_input(key, settings[key], base)
    model = settings.get("model_name_or_path")
    for key in OUTPUT_KEYS:
        if settings.get(key):
            problems += check_output(key, settings[key], model, base)
    return problems
