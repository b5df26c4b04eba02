"""The canonical training record every input format becomes.

Messages are plain dicts so they pass unchanged to a tokenizer's `apply_chat_template`:
- `{"role": "user", "content": str}`
- `{"role": "assistant", "content": str, "reasoning": str (optional),
   "tool_calls": [{"name": str, "arguments": dict}] (optional)}`
- `{"role": "tool", "content": str}` (a tool's answer, "observation" in LLaMA-Factory)
The system prompt and the tool schemas are fields of the sample, not messages. `reasoning` is
plain text without markers, read the same way from every format (data/sources/reasoning.py); the
chat template renders it with its own markers, or drops it (data/encoding/loader.py notes that).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sample:
    """One record: a conversation (SFT), a conversation plus chosen/rejected final answers
    (preference data), a conversation plus a desirable/undesirable label (KTO), or plain text
    (pre-training). `source_file`/`record_index` let every later error point at the record."""

    messages: list[dict]
    system: str | None = None
    tools: str | None = None  # JSON list of tool schemas, as LLaMA-Factory's `tools` column
    chosen: dict | None = None  # preference data: the better final assistant message
    rejected: dict | None = None  # ... and the worse one
    kto_label: bool | None = None  # KTO: is the final assistant message desirable?
    text: str | None = None  # pre-training: raw text, no template
    source_file: str = ""
    record_index: int = -1

    @property
    def where(self) -> str:
        return f"{self.source_file}:record {self.record_index}"
