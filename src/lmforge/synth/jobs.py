"""One LLM job: the store first, else ask, read the JSON (repairing what is unambiguous), ask
once more with a stricter instruction if it cannot be read, and record the result, a failure
included (with the raw reply), as soon as it is known."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmforge.synth.json_repair import Unreadable, parse_reply
from lmforge.synth.llm_client import ClientStats, LLMClient, RequestFailed
from lmforge.synth.store import Entry, Store

logger = logging.getLogger(__name__)


@dataclass
class Counts:
    """What the LLM stages did in this run (the report's numbers)."""

    asked: dict[str, int] = field(default_factory=dict)  # stage -> results asked for this run
    reused: dict[str, int] = field(default_factory=dict)  # stage -> results read from the store
    failed: dict[str, int] = field(default_factory=dict)  # stage -> failures recorded this run
    repairs: int = 0  # replies read only after a repair
    strict_retries: int = 0  # replies asked again with the stricter instruction

    def add(self, name: str, stage: str) -> None:
        table = getattr(self, name)
        table[stage] = table.get(stage, 0) + 1


class Jobs:
    def __init__(self, store: Store, client: LLMClient | None, strict: dict[str, str]):
        self.store = store
        self.client = client
        self.strict = strict  # language -> the stricter instruction
        self.counts = Counts()

    @property
    def client_stats(self) -> ClientStats:
        return self.client.stats if self.client else ClientStats()

    async def run(
        self,
        stage: str,
        key: str,
        messages: list[dict],
        kind: str,
        check: Callable[[Any], Any],
        language: str,
        **provenance: Any,
    ) -> Entry:
        """The result of `stage` for `key`: from the store, or asked for and stored.
        `check` turns the parsed JSON into the stored value, raising ValueError if it does not
        have the expected shape (treated like unreadable JSON)."""
        if self.store.done(key):
            self.counts.add("reused", stage)
            return self.store.get(key)
        self.counts.add("asked", stage)
        raw: str | None = None
        problem = ""
        for strict in (False, True):
            ask = messages
            if strict:
                self.counts.strict_retries += 1
                ask = messages + [
                    {"role": "assistant", "content": raw or ""},
                    {"role": "user", "content": self.strict[language]},
                ]
            try:
                reply = await self.client.chat(ask)
            except RequestFailed as exc:
                problem = str(exc)
                break  # the request itself failed after retries: record, ask on the next run
            raw = reply.text
            try:
                parsed = parse_reply(raw, kind)
                value = check(parsed.value)
            except (Unreadable, ValueError) as exc:
                problem = f"unreadable reply: {exc}"
                if reply.finish_reason == "length":
                    problem += " (cut off at llm.max_tokens)"
                continue
            if parsed.repaired:
                self.counts.repairs += 1
            entry = Entry(key, stage, True, value, raw if parsed.repaired else None, parsed.repairs)
            self.store.put(entry, **provenance)
            return entry
        self.counts.add("failed", stage)
        entry = Entry(key, stage, False, None, raw, (), problem)
        self.store.put(entry, **provenance)
        logger.debug("%s failed: %s", stage, problem)
        return entry
