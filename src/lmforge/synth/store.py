"""The append-only record of every LLM result: output_dir/synth_store.jsonl.

One JSON line per result, written and flushed as the result arrives, keyed by what produced it:
the stage, the input text (a chunk, a question, a record), the prompt's text and the model.
The pipeline is a replay over this store: a result whose key is present is read, not asked for
again, so a rerun after `kill -9` redoes nothing that finished, and changing a prompt or the
model changes the keys of exactly the results it affects. A kill in the middle of a line leaves
a partial last line, which the next open cuts off. A failed result is kept (with the raw reply)
and asked for again on the next run; a later line of the same key wins. A lock file keeps two
runs from writing to one store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from lmforge.errors import UserError

logger = logging.getLogger(__name__)

STORE_FILE = "synth_store.jsonl"
LOCK_FILE = ".synth_store.lock"


def result_key(*parts: Any) -> str:
    """A stable key of the inputs that determine a result."""
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    key: str
    stage: str
    ok: bool
    value: Any  # the parsed result (ok) or None
    raw: str | None  # the LLM's reply as received (kept for failures and repairs)
    repairs: tuple[str, ...] = ()
    error: str | None = None


class Store:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / STORE_FILE
        self._lock = FileLock(str(self.folder / LOCK_FILE))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise UserError(
                f"another `lmforge synth` is writing to {self.folder}",
                fix="wait for it to finish, or give this run another output_dir",
            ) from None
        self._index: dict[str, tuple[int, bool]] = {}  # key -> (line offset, ok)
        self.truncated = self._load()
        self._writer = open(self.path, "ab")  # noqa: SIM115 (closed in close())
        self._reader = open(self.path, "rb")  # noqa: SIM115

    def _load(self) -> int:
        """Index the lines; cut off a partial last line (a kill mid-write). Returns the bytes
        cut."""
        if not self.path.exists():
            return 0
        good_end = 0
        with open(self.path, "rb") as f:
            offset = 0
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    record = json.loads(line)
                    self._index[record["key"]] = (offset, bool(record["ok"]))
                except (ValueError, KeyError, TypeError):
                    break  # a damaged line: stop; what follows it is cut
                offset += len(line)
                good_end = offset
        size = self.path.stat().st_size
        if size > good_end:
            logger.info("synth store: cut %d bytes of an unfinished last line", size - good_end)
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        return size - good_end

    def __len__(self) -> int:
        return len(self._index)

    def done(self, key: str) -> bool:
        """A finished (successful) result exists for this key."""
        found = self._index.get(key)
        return found is not None and found[1]

    def get(self, key: str) -> Entry | None:
        found = self._index.get(key)
        if found is None:
            return None
        self._writer.flush()
        self._reader.seek(found[0])
        record = json.loads(self._reader.readline())
        return Entry(
            record["key"],
            record["stage"],
            record["ok"],
            record.get("value"),
            record.get("raw"),
            tuple(record.get("repairs") or ()),
            record.get("error"),
        )

    def put(self, entry: Entry, **extra: Any) -> None:
        record = {
            "key": entry.key,
            "stage": entry.stage,
            "ok": entry.ok,
            "value": entry.value,
            "raw": entry.raw,
            "repairs": list(entry.repairs),
            "error": entry.error,
            **extra,
        }
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        offset = self._writer.tell()
        self._writer.write(line)
        self._writer.flush()  # in the OS's hands: survives kill -9 of this process
        self._index[entry.key] = (offset, entry.ok)

    def close(self) -> None:
        for handle in (self._writer, self._reader):
            handle.close()
        self._lock.release()
        try:
            os.remove(self.folder / LOCK_FILE)
        except OSError:
            pass

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
