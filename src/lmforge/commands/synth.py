"""`lmforge synth CONFIG.yaml` (documents -> Q&A training data through an OpenAI-compatible
LLM) and `lmforge synth augment CONFIG.yaml` (each record of `dataset` -> N rewrites)."""

from __future__ import annotations

from lmforge.config import load_config
from lmforge.errors import UserError


def synth(path: str | None, overrides: list[str], *, augment: bool = False) -> tuple[str, int]:
    """(what to print, exit code): 0 when every result was written, 1 when some failed (they
    are listed in failed.jsonl and asked for again by the same command)."""
    config = load_config(path, overrides)
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise UserError(
            "`lmforge synth` needs httpx to call the LLM endpoint",
            fix="pip install 'lmforge[synth]'",
        ) from None
    if augment:
        from lmforge.synth.augment import run_augment

        report = run_augment(config)
    else:
        from lmforge.synth.pipeline import run_synth

        report = run_synth(config)
    code = 1 if report.counts.get("failed") or report.validation.get("problems") else 0
    return "\n".join(report.lines()), code
