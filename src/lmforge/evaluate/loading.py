"""The model `lmforge eval` and `lmforge predict` run: the base, then its adapters on top.

Adapters are attached after the base is loaded (and, for a base-vs-adapter comparison, after
the base has been scored), so one copy of the weights is in memory. An adapter that does not
fit the base (trained on another model) is one paragraph naming both, not peft's traceback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lmforge.config.schema import Config
from lmforge.errors import UserError

logger = logging.getLogger(__name__)


def load_base(config: Config):
    """(config with the training run's prompt settings, ModelSetup, base model in eval mode)."""
    from lmforge.config.resolve import resolve_for_inference
    from lmforge.infer.adapters import check_adapter_folder
    from lmforge.model.load import load_for_inference, split_paths
    from lmforge.model.setup import prepare_model_setup, with_training_settings

    resolve_for_inference(config)
    for adapter in split_paths(config.model.adapter_name_or_path):
        check_adapter_folder(adapter)  # before the slow part
    config = with_training_settings(config)  # the prompt format used in training
    setup = prepare_model_setup(config)
    model = load_for_inference(
        setup.resolved.path, config.model, config.method, setup.tokenizer, setup.rope
    )
    return config, setup, model.eval()


def attach_checked(model, adapters: list[str], base_name: str):
    """`model` with each adapter merged in, in order; one that does not fit is a UserError."""
    from lmforge.model.load import attach_adapters, is_quantized

    for adapter in adapters:
        try:
            model = attach_adapters(model, [adapter], merge=not is_quantized(model))
        except UserError:
            raise
        except (RuntimeError, ValueError, KeyError) as exc:
            raise adapter_mismatch(adapter, base_name, exc) from None
    return model.eval()


def adapter_mismatch(adapter: str, base_name: str, exc: Exception) -> UserError:
    trained_on = trained_base(adapter)
    detail = " ".join(str(exc).split())
    detail = detail[:240] + ("..." if len(detail) > 240 else "")
    on = f" was trained on {trained_on} and" if trained_on else ""
    return UserError(
        f"the adapter {adapter}{on} does not fit the model {base_name} "
        f"({type(exc).__name__}: {detail})",
        where=str(Path(adapter) / "adapter_config.json"),
        fix="set model_name_or_path to the model the adapter was trained on"
        + (f" ({trained_on})" if trained_on else "")
        + ", or adapter_name_or_path to an adapter trained on this model",
    )


def trained_base(adapter: str) -> str | None:
    try:
        data = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    return str(value) if value else None
