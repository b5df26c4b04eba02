"""One module per training stage. Each wires data, model and trainer; run.py does the rest."""

from __future__ import annotations

import importlib

from lmforge.train.stages.base import Stage

_MODULES = {
    "pt": "pretrain",
    "sft": "sft",
    "rm": "reward",
    "dpo": "dpo",
    "kto": "kto",
    "ppo": "ppo",
    "grpo": "grpo",
}


def get_stage(name: str) -> Stage:
    module = importlib.import_module(f"lmforge.train.stages.{_MODULES[name]}")
    return module.STAGE
