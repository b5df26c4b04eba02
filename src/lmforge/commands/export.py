"""`lmforge export CONFIG.yaml`: run the export, then say where it is and how it compared."""

from __future__ import annotations

from lmforge.config import load_config
from lmforge.export.report import parity_lines
from lmforge.export.run import run_export

EXIT_PARITY_FAILED = 1


def export_model(path: str | None, overrides: list[str]) -> tuple[str, int]:
    """(what to print, exit code): 0 exported and proven, 1 parity failed (the diff shown)."""
    result = run_export(load_config(path, overrides))
    report = result.report
    lines = parity_lines(report)
    if not result.passed:
        diffs = [
            d
            for key in ("folder", "gguf")
            for d in (report["parity"].get(key) or {}).get("differences", [])
        ]
        text = [
            f"Parity check FAILED: the export was set aside in {result.folder} (export_dir was "
            "not changed). Thresholds: docs/export.md.",
            *lines,
            *[f"  {d}" for d in diffs[:10]],
        ]
        return "\n".join(text), EXIT_PARITY_FAILED
    text = [f"Exported to {result.folder}", *lines]
    text.append(f"Ollama: cd {result.folder} && ollama create {result.folder.name} -f Modelfile")
    if result.hub_url:
        text.append(f"Pushed to {result.hub_url}")
    return "\n".join(text), 0
