"""`lmforge models list|pull NAME|expand MODEL`: the catalogue, what is already on this machine,
and LLaMA Pro's expanded copies."""

from __future__ import annotations

from pathlib import Path

from lmforge.model.catalogue import get_entry, list_entries
from lmforge.model.pull import local_model_path, pull_model
from lmforge.model.source import resolve_model

_COLUMNS = ("NAME", "PARAMS", "TEMPLATE", "SOURCE", "LOCAL")


def models_list() -> str:
    """The catalogue as a table, with each model's local folder or "not pulled"."""
    rows = [
        (
            entry.name,
            entry.params,
            entry.template or "-",
            entry.source.describe(),
            str(local_model_path(entry.name) or "not pulled"),
        )
        for entry in list_entries()
    ]
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [_COLUMNS, *rows]
    ]
    lines.append("")
    lines.append(
        "Use one with `model_name_or_path: NAME`; `lmforge models pull NAME` fetches it now."
    )
    return "\n".join(lines)


def models_pull(name: str, *, force: bool = False) -> Path:
    """Make a model local now and return its folder.

    A catalogue name is pulled (converted or downloaded; `force` redoes it). Anything else
    `model_name_or_path` accepts works too: a hub id is downloaded, a .gguf file converted.
    """
    if get_entry(name) is not None:
        return pull_model(name, force=force)
    return resolve_model(name, pull=True).path


def models_expand(model: str, num_expand: int, output: Path) -> str:
    """LLaMA Pro: `model` with `num_expand` more layers, written to `output`."""
    from lmforge.model.expand import expand_model

    new_layers = expand_model(resolve_model(model, pull=True).path, output, num_expand)
    new = ", ".join(str(i) for i in new_layers)
    return (
        f"Expanded {model} by {num_expand} layers into {output} (new, identity at first: "
        f"{new}).\n"
        f"Train the new layers: model_name_or_path: {output}, finetuning_type: freeze, "
        f"use_llama_pro: true, freeze_trainable_layers: {num_expand}"
    )
