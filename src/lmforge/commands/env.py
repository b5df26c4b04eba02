"""`lmforge env`: versions and device in a form to paste into a bug report."""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_report() -> str:
    from lmforge import __version__, device

    rows = [
        ("lmforge", __version__),
        ("Python", platform.python_version()),
        ("Platform", platform.platform()),
        *((name, _version(name)) for name in PACKAGES),
        ("Device", device.describe()),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"- {name.ljust(width)}: {value}" for name, value in rows)
