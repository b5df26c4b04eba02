"""What hardware we run on, and which precisions it supports natively."""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

import torch


@cache
def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return flags


def cpu_supports_bf16() -> bool:
    """bf16 matmuls in hardware (AVX512-BF16, AMX or Arm BF16). Elsewhere torch emulates bf16,
    which is slower than fp32, so we train in fp32 instead."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def accelerator() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def supports_bf16() -> bool:
    kind = accelerator()
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind == "mps":
        return True
    return cpu_supports_bf16()


def describe() -> str:
    """One line naming the device, for `lmforge env` and the training plan."""
    kind = accelerator()
    if kind == "cuda":
        names = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            names.append(f"{props.name} ({props.total_memory / 2**30:.1f} GiB)")
        return f"CUDA x{len(names)}: " + ", ".join(names)
    if kind == "mps":
        return "Apple MPS"
    import os

    bf16 = "bf16 native" if cpu_supports_bf16() else "no native bf16"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {bf16}"
