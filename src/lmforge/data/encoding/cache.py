"""Content-addressed cache of encoded datasets.

An entry is a folder named by a key over everything encoding depends on: the samples read from
the data files (their content, after column mapping, max_samples, mixing and the split), the
tokenizer (vocabulary, merges, special tokens, chat template), the template, the data settings
and the encoding code itself. Same key, same tokens: a second run loads the arrays instead of
tokenizing. An entry is written under a temporary name and renamed into place, so a run killed
while writing never leaves half an entry behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge import __version__
from lmforge.errors import UserError
from lmforge.paths import lmforge_home

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
_ARRAYS = ("input_ids", "labels", "offsets", "source", "record", "lost")


class TokenizedSet(Sequence):
    """Encoded samples as flat arrays: sample i is input_ids[offsets[i]:offsets[i + 1]].

    Flat arrays load memory-mapped and pack without copying; `source`/`record` point every
    sample back at its file and record, `lost` counts tokens cut at cutoff_len."""

    def __init__(self, arrays: dict[str, np.ndarray], sources: list[str]):
        self.arrays = arrays
        self.sources = sources

    @classmethod
    def build(
        cls, rows: Iterable[tuple[Sequence[int], Sequence[int], str, int, int]]
    ) -> TokenizedSet:
        """From (input_ids, labels, source file, record index, tokens lost) per sample."""
        ids: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        lengths, source, record, lost = [], [], [], []
        sources: dict[str, int] = {}
        for row_ids, row_labels, file, index, row_lost in rows:
            ids.append(np.asarray(row_ids, dtype=np.int32))
            labels.append(np.asarray(row_labels, dtype=np.int32))
            lengths.append(len(row_ids))
            source.append(sources.setdefault(file, len(sources)))
            record.append(index)
            lost.append(row_lost)
        arrays = {
            "input_ids": np.concatenate(ids) if ids else np.zeros(0, np.int32),
            "labels": np.concatenate(labels) if labels else np.zeros(0, np.int32),
            "offsets": np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
            "source": np.asarray(source, dtype=np.int32),
            "record": np.asarray(record, dtype=np.int64),
            "lost": np.asarray(lost, dtype=np.int32),
        }
        return cls(arrays, list(sources))

    def __len__(self) -> int:
        return len(self.arrays["offsets"]) - 1

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end = self.arrays["offsets"][index], self.arrays["offsets"][index + 1]
        return {
            "input_ids": np.asarray(self.arrays["input_ids"][start:end]),
            "labels": np.asarray(self.arrays["labels"][start:end]),
        }

    def lengths(self) -> np.ndarray:
        return np.diff(self.arrays["offsets"])

    def where(self, index: int) -> str:
        """file:record N, as every error message names a record."""
        file = self.sources[self.arrays["source"][index]]
        return f"{file}:record {int(self.arrays['record'][index])}"

    def lost(self, index: int) -> int:
        return int(self.arrays["lost"][index])

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            np.save(folder / f"{name}.npy", self.arrays[name], allow_pickle=False)
        (folder / "sources.json").write_text(json.dumps(self.sources, ensure_ascii=False))

    @classmethod
    def load(cls, folder: Path) -> TokenizedSet:
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        return cls(arrays, json.loads((folder / "sources.json").read_text()))


def digest(value: Any) -> str:
    """sha256 of a JSON rendering (sorted keys; unknown objects by str)."""
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def samples_fingerprint(samples: Iterable[Any]) -> str:
    """The content of the samples: what the data files say, as lmforge read them."""
    hasher = hashlib.sha256()
    for sample in samples:
        fields = vars(sample) if hasattr(sample, "__dict__") else sample
        hasher.update(json.dumps(fields, sort_keys=True, default=str, ensure_ascii=False).encode())
        hasher.update(b"\n")
    return hasher.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Vocabulary, merges, normalizer and added/special tokens (the fast tokenizer's full JSON,
    else the vocabulary), plus the special-token map and the chat template."""
    hasher = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        hasher.update(backend.to_str().encode("utf-8"))
    else:
        hasher.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    extra = {
        "special": getattr(tokenizer, "special_tokens_map", {}),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "bos": getattr(tokenizer, "bos_token_id", None),
        "eos": getattr(tokenizer, "eos_token_id", None),
    }
    hasher.update(digest(extra).encode())
    return hasher.hexdigest()


def object_fingerprint(value: Any) -> str:
    """A template (or any settings object): its fields when it is a dataclass, else its pickle."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return digest({"type": type(value).__name__, **dataclasses.asdict(value)})
    return hashlib.sha256(pickle.dumps(value)).hexdigest()


def code_fingerprint(sources: Iterable[Path]) -> str:
    """The source files that produce tokens: a code change invalidates old entries."""
    hasher = hashlib.sha256(f"{CACHE_FORMAT}:{__version__}".encode())
    for source in sorted(set(sources)):
        if source.is_file():
            hasher.update(source.name.encode() + b"\0" + source.read_bytes())
    return hasher.hexdigest()


def cache_folder(key: str, tokenized_path: str | None) -> Path:
    return Path(tokenized_path) if tokenized_path else lmforge_home() / "datasets" / key


def _stored_key(folder: Path) -> str | None:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("key")
    except (OSError, ValueError):
        return None


def load_entry(folder: Path, key: str) -> tuple[dict[str, TokenizedSet], dict] | None:
    """The sets and manifest stored in `folder` under `key`, or None (absent, other key, torn)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key or manifest.get("format") != CACHE_FORMAT:
        if folder.exists():
            logger.info("Cached encoding in %s was made with other data or settings", folder)
        return None
    try:
        sets = {name: TokenizedSet.load(folder / name) for name in manifest["sets"]}
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("Cached encoding in %s is unreadable (%s); encoding again", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)  # so the new encoding can take its place
        return None
    return sets, manifest


def save_entry(folder: Path, key: str, sets: dict[str, TokenizedSet], manifest: dict) -> None:
    """Write the sets and manifest to a temporary folder, then rename it into place."""
    if _stored_key(folder) == key:
        return  # another process (e.g. another rank) wrote the same entry meanwhile
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, data in sets.items():
            data.save(tmp / name)
        full = {"key": key, "format": CACHE_FORMAT, "lmforge": __version__, **manifest}
        full["sets"] = {name: len(data) for name, data in sets.items()}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=1, ensure_ascii=False))
        if folder.exists():
            _check_replaceable(folder)
            # An older entry (tokenized_path with other settings, or a concurrent writer).
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / MANIFEST).is_file():
                raise
            # Another run wrote the same entry between our check and rename: keep theirs.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_replaceable(folder: Path) -> None:
    """Only an earlier cache entry (or nothing) may be replaced: tokenized_path could point at
    a folder of the user's own files."""
    if folder.is_dir() and ((folder / MANIFEST).is_file() or not any(folder.iterdir())):
        return
    raise UserError(
        f"tokenized_path {folder} exists and is not an lmforge dataset cache",
        fix="point tokenized_path at a new folder (it is created), or remove the folder",
    )
