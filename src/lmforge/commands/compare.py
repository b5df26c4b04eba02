"""`lmforge compare CONFIG.yaml`: the base model and each adapter answer the same prompts."""

from __future__ import annotations


def compare(path: str | None, overrides: list[str]) -> str:
    from lmforge.config import load_config
    from lmforge.evaluate.compare import format_table, run_comparison

    outcome = run_comparison(load_config(path, overrides))
    counts = outcome.report["counts"]
    lines = [f"{counts['prompts']} prompts, {counts['with_reference']} with a reference", ""]
    lines.append(format_table(outcome.report))
    lines.append("")
    lines.append("written: " + ", ".join(str(p) for p in outcome.files))
    return "\n".join(lines)
