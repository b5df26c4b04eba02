"""The canonical training record every input format becomes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sample:
    """One conversation: alternating user/assistant messages, an optional system prompt, and
    where it came from (file and record index) so every later error can point at it."""

    messages: list[dict[str, str]]
    system: str | None = None
    source_file: str = ""
    record_index: int = -1

    @property
    def where(self) -> str:
        return f"{self.source_file}:record {self.record_index}"
