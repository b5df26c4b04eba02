"""Several LoRA adapters on one base, switched per request without reloading anything.

peft keeps every loaded adapter's weights beside the base layers; `set_adapter` only changes
which one the LoRA layers add, and disabling the adapter layers gives the plain base. Switching
is not thread-safe (it flips flags on shared modules), so only the scheduler's worker thread
calls `activate`, between forward passes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmforge.errors import UserError
from lmforge.model import pissa

logger = logging.getLogger(__name__)


def check_adapter_folder(path: str, name: str | None = None) -> None:
    if not (Path(path) / "adapter_config.json").is_file():
        label = f"adapter `{name}` folder" if name else "adapter folder"
        raise UserError(
            f"{label} {path} has no adapter_config.json",
            fix="point it at a training output_dir (or a checkpoint in it)",
        )
    pissa.check_reloadable(path)


class AdapterSwitch:
    """Which named adapter the shared PeftModel applies; None means the base model."""

    def __init__(self, peft_model, names: list[str]):
        self.model = peft_model
        self.names = names
        self.current: str | None = names[0]  # peft activates the first one loaded

    def activate(self, name: str | None) -> None:
        if name == self.current:
            return
        if name is None:
            self.model.base_model.disable_adapter_layers()
        else:
            if self.current is None:
                self.model.base_model.enable_adapter_layers()
            self.model.base_model.set_adapter(name)
        self.current = name


def load_named_adapters(model, adapters: dict[str, str]):
    """Wrap `model` with every adapter in `adapters` (name -> folder); returns (model, switch)."""
    from peft import PeftModel

    for name, path in adapters.items():
        check_adapter_folder(path, name)
    items = list(adapters.items())
    first_name, first_path = items[0]
    peft_model = PeftModel.from_pretrained(model, first_path, adapter_name=first_name)
    for name, path in items[1:]:
        peft_model.load_adapter(path, adapter_name=name)
    logger.info("adapters loaded: %s", ", ".join(adapters))
    return peft_model.eval(), AdapterSwitch(peft_model, [name for name, _ in items])
