"""The device an estimate is for: a card from gpus.yaml, or the machine this runs on."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from lmforge.errors import UserError
from lmforge.suggest import did_you_mean

GIB = 2**30
CARDS_FILE = Path(__file__).with_name("gpus.yaml")


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # "cuda" (a GPU, from the table or this machine) or "cpu"
    memory_bytes: int  # what one device holds (CPU: the machine's available RAM)
    peak_flops: float  # dense bf16 (GPU) or measured matmul (CPU: fp32, or bf16) FLOP/s
    mfu: float  # share of the peak lmforge reaches (gpus.yaml)
    source: str  # where the figures come from, for the report
    # CPU only (0 elsewhere: a GPU's step is modelled by its MFU alone): memory rates measured
    # now, for the per-step work that is not matmuls (estimate/step_overhead.py).
    read_bytes_per_s: float = 0.0  # streaming through memory that is already the process's
    fresh_bytes_per_s: float = 0.0  # writing memory new from the kernel (page faults)


@cache
def card_table() -> dict:
    return yaml.safe_load(CARDS_FILE.read_text())


def cards() -> list[dict]:
    return card_table()["gpus"]


def mfu(kind: str) -> float:
    """`kind`: cuda, cpu (fp32) or cpu_bf16."""
    return float(card_table()["mfu"]["gpu" if kind == "cuda" else kind])


def _key(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def find_card(name: str) -> dict:
    wanted = _key(name).removeprefix("nvidia ")
    for card in cards():
        if wanted in {_key(card["name"]), *(_key(a) for a in card.get("aliases", []))}:
            return card
    names = [card["name"] for card in cards()]
    hint = did_you_mean(name, names + [str(a) for c in cards() for a in c.get("aliases", [])])
    raise UserError(
        f"--gpu {name} is not a card lmforge knows" + (f" ({hint.strip()})" if hint else ""),
        fix=f"use one of: {', '.join(names)} (src/lmforge/estimate/gpus.yaml lists them; add "
        "yours there with its memory and bf16 TFLOP/s)",
    )


def card_device(name: str) -> Device:
    card = find_card(name)
    return Device(
        name=card["name"],
        kind="cuda",
        memory_bytes=int(card["memory_gib"] * GIB),
        peak_flops=float(card["bf16_tflops"]) * 1e12,
        mfu=mfu("cuda"),
        source="gpus.yaml",
    )


def this_device(*, measure_peak=None, bf16: bool = False) -> Device:
    """The device here: the first CUDA GPU (matched in gpus.yaml for its throughput), else the
    CPU with its available RAM, a matmul peak measured now, in the dtype the run computes in
    (`bf16`: bf16 matmuls on a CPU with native bf16, of which lmforge reaches its own share),
    and its memory rates (cpu_memory_rates)."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        try:
            card = find_card(props.name)
            peak, source = float(card["bf16_tflops"]) * 1e12, f"gpus.yaml ({card['name']})"
        except UserError:
            peak, source = 100e12, "not in gpus.yaml: 100 TFLOP/s assumed"
        return Device(props.name, "cuda", props.total_memory, peak, mfu("cuda"), source)
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = measure_peak() if measure_peak else cpu_matmul_peak(dtype=dtype)
    read, fresh = cpu_memory_rates()
    return Device(
        name=f"CPU ({os.cpu_count()} cores)",
        kind="cpu",
        memory_bytes=available_ram(),
        peak_flops=peak,
        mfu=mfu("cpu_bf16" if bf16 else "cpu"),
        source=f"{'bf16' if bf16 else 'fp32'} matmul peak measured now; memory: available RAM",
        read_bytes_per_s=read,
        fresh_bytes_per_s=fresh,
    )


def free_memory(kind: str) -> int:
    """Free memory of this device now: CUDA's free bytes, or the available RAM."""
    if kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    return available_ram()


def available_ram() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 16 * GIB


def cpu_matmul_peak(seconds: float = 0.6, dtype=None) -> float:
    """FLOP/s of a 1024 x 1024 matmul on this CPU (fp32, or `dtype`), best of a few (about
    half a second)."""
    import torch

    dtype = dtype or torch.float32
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    a @ b  # warm up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * 1024**3 / (time.perf_counter() - start))
    return best


def cpu_memory_rates(size: int = 2**28, repeats: int = 3) -> tuple[float, float]:
    """Bytes/s of this CPU (best of a few, about 0.3 s): summing a 256 MiB tensor already in
    memory, and filling a new one. The second is what a weight-sized tensor made anew every
    step costs (the kernel maps and zeroes each page first; on the 2-core machine of
    docs/estimate.md 35 and 4.9 GB/s)."""
    import torch

    elements = size // 4
    kept = torch.ones(elements)
    read = fresh = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        kept.sum()
        read = min(read, time.perf_counter() - start)
        start = time.perf_counter()
        torch.empty(elements).fill_(1.0)
        fresh = min(fresh, time.perf_counter() - start)
    return size / read, size / fresh
