"""The conversations parity is checked on: the training run's eval split (eval_dataset, or the
val_size share held out with the run's seed), read again from the run's own config; else the
built-in prompts. A run whose data has moved falls back to the built-in prompts, with a note."""

from __future__ import annotations

import logging
from pathlib import Path

from lmforge.config.run_files import RUN_CONFIG
from lmforge.data.sources.mixing import holds_out
from lmforge.errors import UserError
from lmforge.export.parity import built_in_conversations, prompt_messages

logger = logging.getLogger(__name__)


def parity_conversations(run_folder: Path | None, settings: dict) -> tuple[list, str]:
    """(conversations as (messages, system), where they came from)."""
    has_eval = bool(settings.get("eval_dataset")) or holds_out(settings.get("val_size"))
    if run_folder is None or not has_eval or settings.get("stage") == "pt":
        return built_in_conversations(), "built-in prompts"
    try:
        samples = _eval_samples(run_folder)
    except (UserError, OSError, ValueError) as exc:
        logger.warning(
            "parity: the training run's eval split cannot be read (%s); using the built-in prompts",
            str(exc).splitlines()[0],
        )
        return built_in_conversations(), "built-in prompts"
    conversations = prompt_messages(samples)
    if not conversations:
        return built_in_conversations(), "built-in prompts"
    return conversations, f"the training run's eval split ({run_folder})"


def _eval_samples(run_folder: Path) -> list:
    from lmforge.config import load_config
    from lmforge.data.encoding.loader import DataReport
    from lmforge.data.sources.load import load_splits

    config = load_config(run_folder / RUN_CONFIG)
    data = config.data
    if data.streaming:
        return []
    _, evaluation = load_splits(
        data, DataReport(), seed=config.train.seed, stage=config.method.stage
    )
    return list(evaluation)
