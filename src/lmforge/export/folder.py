"""The export folder's files, written into a staging folder that becomes export_dir only when
everything is written and proven (a killed export leaves `.NAME.partial-PID-*`, removed by the
next export; never a folder that looks complete).

- weights: safetensors shards of at most export_size GB (with model.safetensors.index.json
  when there are several), or PyTorch .bin shards with export_legacy_format;
- config.json, and generation_config.json whose eos_token_id lists every stop token;
- the tokenizer, with the training chat template written in;
- value_head.safetensors for a reward model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from lmforge.model.gguf_convert import make_staging_dir, move_into_place, remove_stale_staging

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
FAILED_SUFFIX = ".parity-failed"


def staging_folder(export_dir: Path) -> Path:
    """A fresh hidden folder beside export_dir (same file system: the final rename is atomic);
    staging folders of exports that died are removed first."""
    remove_stale_staging(export_dir)
    staging = make_staging_dir(export_dir)
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private
    return staging


def write_weights(model, folder: Path, *, dtype: torch.dtype, shard_bytes: int, legacy: bool):
    """config.json and the weights in `dtype`; returns the weight files written."""
    model = model.to(dtype)
    model.config.use_cache = True
    model.save_pretrained(str(folder), max_shard_size=shard_bytes)
    if legacy:
        _to_bin(folder)
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def _to_bin(folder: Path) -> None:
    """safetensors shards -> pytorch_model*.bin shards (and their index)."""
    from safetensors.torch import load_file

    renamed = {}
    for shard in sorted(folder.glob("model*.safetensors")):
        name = "pytorch_model" + shard.name[len("model") : -len(".safetensors")] + ".bin"
        torch.save(load_file(str(shard)), folder / name)
        shard.unlink()
        renamed[shard.name] = name
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {k: renamed[v] for k, v in data["weight_map"].items()}
        (folder / BIN_INDEX).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        index.unlink()


def write_generation_config(folder: Path, base: Path, config, stop_ids: list[int], tokenizer):
    """The base's generation settings (if any), ending at every stop token of the template."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(str(base))
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    generation.eos_token_id = list(stop_ids) if len(stop_ids) != 1 else stop_ids[0]
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    if tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    generation.save_pretrained(str(folder))


def write_tokenizer(tokenizer, folder: Path, chat_template: str | None) -> None:
    """The tokenizer with the training chat template written in (the object is restored)."""
    original = tokenizer.chat_template
    tokenizer.chat_template = chat_template
    try:
        tokenizer.save_pretrained(str(folder))
    finally:
        tokenizer.chat_template = original


def copy_value_head(value_head: Path | None, folder: Path) -> None:
    if value_head is not None:
        shutil.copy2(value_head, folder / value_head.name)


def finish(staging: Path, export_dir: Path) -> Path:
    """The staging folder becomes export_dir (an earlier export there is replaced)."""
    _make_readable(staging)
    move_into_place(staging, export_dir)
    return export_dir


def set_aside(staging: Path, export_dir: Path) -> Path:
    """A folder that failed its parity check goes beside export_dir, named so that nobody
    takes it for the export: export_dir itself is left as it was."""
    failed = export_dir.with_name(export_dir.name + FAILED_SUFFIX)
    _make_readable(staging)
    move_into_place(staging, failed)
    return failed


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _make_readable(folder: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)
