"""`lmforge env`: versions and device in a form to paste into a bug report."""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")
# The extras that change how training runs, shown when installed (as LLaMA-Factory's `env`).
OPTIONAL_PACKAGES = ("deepspeed", "bitsandbytes", "flash-attn", "liger-kernel", "vllm")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _installed(name: str) -> bool:
    return _version(name) != "not installed"


def environment_report() -> str:
    import torch

    from lmforge import __version__, device

    rows = [
        ("lmforge", __version__),
        ("Python", platform.python_version()),
        ("Platform", platform.platform()),
        *((name, _version(name)) for name in PACKAGES),
        *((name, _version(name)) for name in OPTIONAL_PACKAGES if _installed(name)),
        ("Device", device.describe()),
    ]
    if torch.version.cuda:
        rows.append(("CUDA (torch)", torch.version.cuda))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"- {name.ljust(width)}: {value}" for name, value in rows)
