"""Convert a GGUF file into a plain Hugging Face folder: config, safetensors, tokenizer.

transformers reads GGUF by dequantizing every tensor (slow: ~40 s for 270M parameters on two
CPU cores) and refuses to save the result. So we read it once, copy the weights into a fresh
model built from the same config, save that, and load it with plain `from_pretrained` ever after.

Everything is written into a hidden staging folder next to the destination and renamed into
place only when complete and verified, so an interrupted conversion never leaves a folder that
looks finished. Callers that may race (two commands pulling at once) hold `conversion_lock`.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lmforge.errors import UserError

logger = logging.getLogger(__name__)

CONVERSION_INFO = "lmforge_conversion.json"  # provenance, written into every converted folder
_PARTIAL = ".partial-"  # marks staging folders: `.<dest name>.partial-<pid>-<random>`
_VERIFY_TEXT = "The quick brown fox jumps over the lazy dog."


def is_converted(dest: Path) -> bool:
    """A destination exists only after its final rename, so existing means complete."""
    return (dest / "config.json").is_file()


@contextlib.contextmanager
def conversion_lock(dest: Path) -> Iterator[None]:
    """Serialise conversions into `dest` across processes; the loser then finds it done."""
    from filelock import FileLock  # a dependency of huggingface_hub, hence always present

    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(dest.parent / f".{dest.name}.lock"))
    if not _try_acquire(lock):
        logger.info("Waiting for another lmforge process converting %s ...", dest.name)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _try_acquire(lock: Any) -> bool:
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    return True


def make_staging_dir(dest: Path) -> Path:
    """A fresh hidden folder next to `dest` (same filesystem, so the final rename is atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}{_PARTIAL}{os.getpid()}-", dir=dest.parent))


def remove_stale_staging(dest: Path) -> None:
    """Delete staging folders left by conversions whose process is gone (killed, power cut)."""
    for path in dest.parent.glob(f".{dest.name}{_PARTIAL}*"):
        pid_text = path.name.split(_PARTIAL, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            logger.info("Removing an interrupted conversion: %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but not ours, or we cannot tell: leave it alone
    return True


def convert_gguf(
    gguf_path: str | Path,
    dest: str | Path,
    *,
    generation_config: Mapping[str, Any] | None = None,
    origin: str | None = None,
    verify: bool = True,
) -> Path:
    """Convert `gguf_path` into a Hugging Face folder at `dest` (replaced if it exists).

    `generation_config` values override those derived from the model config; `origin` says
    where the GGUF came from (recorded in lmforge_conversion.json; default: its path). With
    `verify`, the written folder is loaded back and must give the same logits as the GGUF model.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    dest = Path(dest).expanduser()
    if importlib.util.find_spec("gguf") is None:
        raise UserError(
            f"reading the GGUF file {gguf_path} needs the `gguf` package",
            fix="pip install 'lmforge[gguf]'",
        )
    remove_stale_staging(dest)
    staging = make_staging_dir(dest)
    started = time.monotonic()
    try:
        dtype = _write_folder(gguf_path, staging, generation_config or {}, verify=verify)
        _write_info(staging, origin or str(gguf_path), gguf_path, dtype, time.monotonic() - started)
        _make_readable(staging)
        move_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Converted %s -> %s in %.0f s", gguf_path.name, dest, time.monotonic() - started)
    return dest


def _write_folder(
    gguf_path: Path, staging: Path, generation_config: Mapping[str, Any], *, verify: bool
) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    where, name = str(gguf_path.parent), gguf_path.name
    steps = 5 if verify else 4
    logger.info("[1/%d] Loading the tokenizer from %s", steps, gguf_path)
    with _gguf_errors(gguf_path):
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    tokenizer.save_pretrained(staging)

    logger.info("[2/%d] Loading and dequantizing the GGUF weights (the slow step)", steps)
    with _gguf_errors(gguf_path):
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    state_dict = loaded.state_dict()
    dtype = _storage_dtype(state_dict)

    dtype_name = str(dtype).removeprefix("torch.")
    logger.info("[3/%d] Building a plain %s (%s)", steps, type(loaded).__name__, dtype_name)
    config = copy.deepcopy(loaded.config)
    for attr in ("quantization_config", "_model_name_or_path"):  # GGUF loading artefacts
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = dtype
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(state_dict, strict=True)  # copies (and casts) into fresh's tensors

    logger.info("[4/%d] Writing safetensors to %s", steps, staging)
    fresh.save_pretrained(staging)  # transformers 5 always writes safetensors
    generation = GenerationConfig.from_model_config(config)
    generation.update(**dict(generation_config))
    generation.save_pretrained(staging)
    del fresh, state_dict
    gc.collect()

    if verify:
        logger.info("[5/%d] Checking the written folder against the GGUF model", steps)
        _verify(staging, loaded, tokenizer)
    return dtype_name


def _storage_dtype(state_dict: Mapping[str, Any]) -> Any:
    """bf16 if every weight survives the cast exactly, else fp32.

    bf16 would halve the folder, but dequantized k-quant weights (block scale x small integer)
    are mostly not bf16 numbers: for gemma-3-270m Q4_K_M only 12 % are, and rounding them
    moved the logits by up to 0.29 (fp32: 0.0). Those stay fp32 (1.07 GB instead of 0.54 GB);
    users still load them in bf16 when they ask. A GGUF holding BF16 tensors stays bf16.
    """
    import torch

    for tensor in state_dict.values():
        if tensor.is_floating_point() and not torch.equal(
            tensor.to(torch.bfloat16).to(tensor.dtype), tensor
        ):
            return torch.float32
    return torch.bfloat16


def _verify(staging: Path, loaded: Any, tokenizer: Any) -> None:
    """The written folder must load with plain from_pretrained and match the GGUF model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32)
    input_ids = tokenizer(_VERIFY_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = loaded(input_ids=input_ids).logits
        actual = reloaded(input_ids=input_ids).logits
    diff = (expected - actual).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"converted model differs from the GGUF model (max logit diff {diff})")
    saved_tokenizer = AutoTokenizer.from_pretrained(staging)
    if saved_tokenizer(_VERIFY_TEXT)["input_ids"] != tokenizer(_VERIFY_TEXT)["input_ids"]:
        raise RuntimeError("the saved tokenizer encodes text differently from the GGUF tokenizer")


@contextlib.contextmanager
def _gguf_errors(gguf_path: Path) -> Iterator[None]:
    """transformers' complaints about a GGUF file (unsupported architecture, not a GGUF file)."""
    try:
        yield
    except (ValueError, KeyError, NotImplementedError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"transformers cannot read the GGUF file {gguf_path}: {reason}",
            fix="check that it is a complete GGUF file of a text model transformers supports, "
            "or use the model's Hugging Face folder or hub id instead",
        ) from exc


def _write_info(staging: Path, origin: str, gguf_path: Path, dtype: str, seconds: float) -> None:
    import transformers

    from lmforge import __version__

    stat = gguf_path.stat()
    info = {
        "source": origin,
        "source_size": stat.st_size,
        "source_mtime": stat.st_mtime,
        "dtype": dtype,
        "seconds": round(seconds, 1),
        "lmforge": __version__,
        "transformers": transformers.__version__,
    }
    (staging / CONVERSION_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _make_readable(folder: Path) -> None:
    """mkdtemp makes the folder 0700 and safetensors writes 0600; a model cache shared by the
    users of a machine needs the usual umask-derived modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def move_into_place(staging: Path, dest: Path) -> None:
    """Rename a finished staging folder to `dest`, replacing what is there (export uses it too)."""
    if not dest.exists():
        os.rename(staging, dest)
        return
    # A directory cannot be replaced in one step: park the old one under a staging-like name
    # (swept up if we die now), swap, then delete it.
    old = dest.with_name(f".{dest.name}{_PARTIAL}{os.getpid()}-old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(dest, old)
    os.rename(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
