"""The files that describe a training run in its output folder, named once.

run_config.yaml is the config as the user wrote it; run_plan.yaml what lmforge derived from it
(config/plan.py). Inference, reward models and export read the two together.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

RUN_CONFIG = "run_config.yaml"
RUN_PLAN = "run_plan.yaml"


def write_yaml(path: Path, data: dict) -> Path:
    """Write atomically: a temporary file, then a rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def run_settings(folder: str | Path) -> dict | None:
    """The settings a run in `folder` trained with: its config, with what the plan derived
    (template, lora_alpha, ...) where the plan has a value. None when `folder` is no run."""
    folder = Path(folder)
    if not (folder / RUN_CONFIG).is_file():
        return None
    derived = {k: v for k, v in _read(folder / RUN_PLAN).items() if v is not None}
    return {**_read(folder / RUN_CONFIG), **derived}
