"""Reading tool calls back out of generated text, per tool format.

data/templates/tools.py writes tools and calls into prompts (formats `qwen`, `default`, `glm4`);
this module is its inverse for answers, streamed or whole:
- qwen:    <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>  (Hermes style)
- default: Action: f\nAction Input: {...}  (LLaMA-Factory's ReAct text; several may follow)
- glm4:    f\n{...}  (the whole answer is the call)
Content before a call streams as it comes; a call is held back until it is complete. Text that
looked like a call but does not parse is given back as content, so nothing generated is lost.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from lmforge.infer.markers import MarkerSplitter, partial_suffix

Event = tuple[str, object]  # ("content", str) | ("tool_call", ToolCall)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def make_call(name: object, arguments: object) -> ToolCall | None:
    """A call from a parsed name and arguments (dict or JSON text); None if they are not valid."""
    if not isinstance(name, str) or not re.fullmatch(r"[\w.\-]+", name):
        return None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name, json.dumps(arguments, ensure_ascii=False))


class ToolParser:
    """One tool format's reader. `extractor()` gives a fresh streaming state per answer."""

    name = ""

    def extractor(self):
        raise NotImplementedError

    def forced_prefix(self, function: str | None) -> str | None:
        """The start of an answer that must call `function` (any tool when None)."""
        raise NotImplementedError

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """(content without the calls, calls) from a whole answer."""
        extractor = self.extractor()
        events = extractor.feed(text) + extractor.finish()
        content = "".join(v for kind, v in events if kind == "content")
        return content, [v for kind, v in events if kind == "tool_call"]


class QwenToolParser(ToolParser):
    name = "qwen"
    open, close = "<tool_call>", "</tool_call>"

    def extractor(self) -> TaggedExtractor:
        return TaggedExtractor(self.open, self.close, self.parse_call)

    def forced_prefix(self, function: str | None) -> str:
        if function is None:
            return f"{self.open}\n"
        return f'{self.open}\n{{"name": {json.dumps(function)}, "arguments": '

    @staticmethod
    def parse_call(body: str) -> ToolCall | None:
        try:
            data = json.loads(body.strip())
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        return make_call(data.get("name"), data.get("arguments", data.get("parameters", {})))


_REACT = re.compile(r"Action:\s*([\w.\-]+)\s*Action Input:\s*(.+?)(?=\s*Action:|\s*$)", re.DOTALL)


class ReActToolParser(ToolParser):
    name = "default"

    def extractor(self) -> TailExtractor:
        return TailExtractor("Action:", self.parse_tail)

    def forced_prefix(self, function: str | None) -> str:
        return "Action: " if function is None else f"Action: {function}\nAction Input: "

    @staticmethod
    def parse_tail(tail: str) -> list[ToolCall] | None:
        calls = []
        for name, arguments in _REACT.findall(tail):
            call = make_call(name, arguments.strip().strip("`").strip())
            if call is None:
                return None
            calls.append(call)
        return calls or None


class Glm4ToolParser(ToolParser):
    name = "glm4"

    def extractor(self) -> TailExtractor:
        # A GLM-4 call has no marker: the answer is held whole and read at the end.
        return TailExtractor("", self.parse_tail)

    def forced_prefix(self, function: str | None) -> str | None:
        return None if function is None else f"{function}\n"

    @staticmethod
    def parse_tail(tail: str) -> list[ToolCall] | None:
        name, newline, arguments = tail.strip().partition("\n")
        call = make_call(name.strip(), arguments) if newline else None
        return [call] if call else None


PARSERS: dict[str, ToolParser] = {
    p.name: p for p in (QwenToolParser(), ReActToolParser(), Glm4ToolParser())
}


def get_tool_parser(name: str) -> ToolParser:
    # Formats the writer knows but we cannot read yet fall back to the Hermes tags.
    return PARSERS.get(name, PARSERS["qwen"])


class TaggedExtractor:
    """Calls between open/close tags; content outside them streams through."""

    def __init__(self, open_tag: str, close_tag: str, parse_call):
        self.open, self.close = open_tag, close_tag
        self.parse_call = parse_call
        self.splitter = MarkerSplitter(open_tag, close_tag)
        self.body = ""

    def feed(self, text: str) -> list[Event]:
        return self._events(self.splitter.feed(text))

    def finish(self) -> list[Event]:
        events = self._events(self.splitter.flush())
        if self.splitter.inside and self.body.strip():
            # Cut off before the closing tag (EOS or max_tokens): keep it if it parses.
            call = self.parse_call(self.body)
            events.append(("tool_call", call) if call else ("content", self.open + self.body))
        self.body = ""
        return events

    def _events(self, segments: list[tuple[bool, str]]) -> list[Event]:
        events: list[Event] = []
        for inside, text in segments:
            if not inside:
                if text:
                    events.append(("content", text))
            elif text:
                self.body += text
            else:  # the closing tag
                call = self.parse_call(self.body)
                events.append(
                    ("tool_call", call) if call else ("content", self.open + self.body + self.close)
                )
                self.body = ""
        return events


class TailExtractor:
    """Content streams until `marker`; from there on the rest is held and parsed at the end."""

    def __init__(self, marker: str, parse_tail):
        self.marker = marker
        self.parse_tail = parse_tail
        self.pending = ""
        self.tail: str | None = "" if not marker else None

    def feed(self, text: str) -> list[Event]:
        if self.tail is not None:
            self.tail += text
            return []
        self.pending += text
        at = self.pending.find(self.marker)
        if at >= 0:
            head, self.tail, self.pending = self.pending[:at], self.pending[at:], ""
            return [("content", head)] if head else []
        keep = partial_suffix(self.pending, self.marker)
        head = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return [("content", head)] if head else []

    def finish(self) -> list[Event]:
        events: list[Event] = [("content", self.pending)] if self.pending else []
        if self.tail:
            calls = self.parse_tail(self.tail)
            if calls:
                events += [("tool_call", c) for c in calls]
            else:
                events.append(("content", self.tail))
        self.pending, self.tail = "", ("" if not self.marker else None)
        return events
