"""A generated answer, streamed or whole, split into reasoning, content and tool calls.

Reasoning is the text between the template's thinking markers (e.g. <think>...</think>);
tool calls are read only from the text outside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.infer.markers import MarkerSplitter
from lmforge.infer.tool_parser import ToolCall, ToolParser

Event = tuple[str, object]  # ("reasoning", str) | ("content", str) | ("tool_call", ToolCall)


@dataclass
class Answer:
    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def add(self, events: list[Event]) -> Answer:
        for kind, value in events:
            if kind == "tool_call":
                self.tool_calls.append(value)
            elif kind == "reasoning":
                self.reasoning += value
            else:
                self.content += value
        return self


class _Trim:
    """Drops whitespace at the edges of a block (after </think>, around a tool call) while
    streaming: leading whitespace while `at_start`; with `hold`, trailing whitespace waits
    until more text shows it is not the edge before a tool call."""

    def __init__(self, *, at_start: bool = False, hold: bool = True):
        self.at_start = at_start
        self.hold = hold
        self.held = ""

    def feed(self, text: str) -> str:
        text = self.held + text
        if self.at_start:
            text = text.lstrip()
        body = text.rstrip() if self.hold else text
        self.held = text[len(body) :]
        if body.strip():
            self.at_start = False
        return body

    def edge(self) -> None:
        """A block boundary: what is held is dropped, and the next text starts fresh."""
        self.held, self.at_start = "", True


class AnswerParser:
    """Streamed answer text -> events; `parse` does a whole answer at once."""

    def __init__(
        self,
        thinking: tuple[str, str] | None = None,
        tools: ToolParser | None = None,
        *,
        reasoning_open: bool = False,
    ):
        self.thinking = MarkerSplitter(*thinking, inside=reasoning_open) if thinking else None
        self.tools = tools.extractor() if tools else None
        self.reasoning_trim = _Trim(at_start=True)
        # Trailing whitespace is held only where a tool call may follow it.
        self.content_trim = _Trim(hold=tools is not None)
        self.structured = False  # saw reasoning or a tool call: trailing whitespace goes

    def feed(self, text: str) -> list[Event]:
        if self.thinking is None:
            return self._content(text)
        return self._split(self.thinking.feed(text))

    def finish(self) -> list[Event]:
        events = self._split(self.thinking.flush()) if self.thinking else []
        if self.tools:
            events += self._trimmed(self.tools.finish())
        if self.content_trim.held and not self.structured:
            events.append(("content", self.content_trim.held))
        return events

    def parse(self, text: str) -> Answer:
        """The whole answer at once (non-streaming responses)."""
        return Answer().add(self.feed(text) + self.finish())

    def _split(self, segments: list[tuple[bool, str]]) -> list[Event]:
        events: list[Event] = []
        for inside, text in segments:
            if inside and text:
                self.structured = True
                text = self.reasoning_trim.feed(text)
                if text:
                    events.append(("reasoning", text))
            elif inside:  # the reasoning block closed
                self.structured = True
                self.reasoning_trim.edge()
                self.content_trim.edge()
            elif text:
                events += self._content(text)
            else:  # a reasoning block opened
                self.reasoning_trim.edge()
        return events

    def _content(self, text: str) -> list[Event]:
        events = self.tools.feed(text) if self.tools else [("content", text)]
        return self._trimmed(events)

    def _trimmed(self, events: list[Event]) -> list[Event]:
        out: list[Event] = []
        for kind, value in events:
            if kind == "tool_call":
                self.structured = True
                self.content_trim.edge()
                out.append((kind, value))
            else:
                text = self.content_trim.feed(value)
                if text:
                    out.append((kind, text))
        return out
