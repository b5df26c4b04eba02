"""`lmforge data inspect|validate CONFIG.yaml`: the data as training will see it, before training.

Neither command loads model weights: inspect needs the tokenizer and template, validate only
the records.
"""

from __future__ import annotations

import json

from lmforge.config import load_config

PROBLEMS_SHOWN = 50


def data_inspect(
    config_path: str,
    overrides: list[str] | None = None,
    *,
    num: int = 3,
    index: int | None = None,
    as_json: bool = False,
    color: bool = False,
) -> str:
    """Chosen samples with trained tokens marked, then statistics (or all of it as JSON)."""
    from lmforge.data.inspect import inspect_data
    from lmforge.model.setup import prepare_model_setup

    config = load_config(config_path, overrides)
    setup = prepare_model_setup(config)  # tokenizer and template; no weights
    result = inspect_data(
        config.data,
        setup.template,
        setup.tokenizer,
        config.train.seed,
        num=num,
        index=index,
        stage=config.method.stage,
    )
    if as_json:
        return json.dumps(result.to_dict(), ensure_ascii=False, indent=1)
    return result.render(color)


def data_validate(config_path: str, overrides: list[str] | None = None) -> tuple[str, int]:
    """Every problem of every record as `file:record N:field: reason` (the first 50, then a
    count), and the exit code: 1 if there is any problem, else 0."""
    from lmforge.data.sources.validation import validate_data

    config = load_config(config_path, overrides)
    result = validate_data(config.data, config.method.stage, config.train.seed)
    notes = [f"note: {note}" for note in dict.fromkeys(result.notes)]
    lines = notes + result.lines(limit=PROBLEMS_SHOWN)
    return "\n".join(lines), 1 if result.problems else 0
