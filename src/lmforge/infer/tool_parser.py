"""Reading tool calls back out of generated text, per tool format.

data/templates/tools.py writes tools and calls into prompts; this module is its inverse for
answers, streamed or whole:
- qwen:      <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>  (Hermes style)
- default:   Action: f\nAction Input: {...}  (LLaMA-Factory's ReAct text; several may follow)
- glm4:      f\n{...}  (the whole answer is the call)
- llama3:    {"name": "f", "parameters": {...}}  (the whole answer; several joined by ";")
- mistral, mistral_nemo: [TOOL_CALLS] [{"name": "f", "arguments": {...}, "id": "..."}, ...]
- deepseek3: <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{...}\n```
             <｜tool▁call▁end｜>...<｜tool▁calls▁end｜>  (DeepSeek V3/R1; V3.1's `f<｜tool▁sep｜>{...}`
             is read too)
Answers are decoded without special tokens, so a marker the tokenizer treats as special
(Llama's <|python_tag|>, Mistral's [TOOL_CALLS]) may be missing: Llama 3.1 and Mistral calls are
also recognised by how the answer starts (`{` / `[{`), as vLLM's parsers do.
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
        return TaggedExtractor(self.open, self.close, self.parse_block)

    @classmethod
    def parse_block(cls, body: str) -> list[ToolCall] | None:
        call = cls.parse_call(body)
        return [call] if call else None

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


def _json_values(text: str, separators: str) -> list[object] | None:
    """The JSON values written one after another in `text`, with whitespace and any of
    `separators` between them; None when anything else is there."""
    decoder = json.JSONDecoder()
    values, i = [], 0
    while True:
        while i < len(text) and (text[i].isspace() or text[i] in separators):
            i += 1
        if i == len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return None
        values.append(value)


class Llama3ToolParser(ToolParser):
    """Llama 3.1-3.3: the answer is the call, `{"name": ..., "parameters": {...}}` (after a
    <|python_tag|> when special tokens are kept); several calls are joined by ";"."""

    name = "llama3"
    tag = "<|python_tag|>"

    def extractor(self) -> StartExtractor:
        return StartExtractor(("{", self.tag), self.parse_tail)

    def forced_prefix(self, function: str | None) -> str:
        if function is None:
            return '{"name": "'
        return f'{{"name": {json.dumps(function)}, "parameters": '

    @classmethod
    def parse_tail(cls, tail: str) -> list[ToolCall] | None:
        values = _json_values(tail.replace(cls.tag, ""), ";")
        if not values or not all(isinstance(v, dict) for v in values):
            return None
        calls = [
            make_call(v.get("name"), v.get("parameters", v.get("arguments", {}))) for v in values
        ]
        return calls if all(calls) else None


class MistralToolParser(ToolParser):
    """Mistral v0.3 / Nemo: `[TOOL_CALLS]` and a JSON list of calls (with their ids); the
    marker is a special token, so an answer that starts with `[{` is read as calls too."""

    marker = "[TOOL_CALLS]"

    def __init__(self, name: str, space: str):
        self.name, self.space = name, space

    def extractor(self) -> StartExtractor:
        return StartExtractor(("[{", self.marker), self.parse_tail, marker=self.marker)

    def forced_prefix(self, function: str | None) -> str:
        start = f"{self.marker}{self.space}["
        if function is None:
            return start + '{"name": "'
        return start + f'{{"name": {json.dumps(function)}, "arguments": '

    @classmethod
    def parse_tail(cls, tail: str) -> list[ToolCall] | None:
        values = _json_values(tail.replace(cls.marker, " "), ",")
        if not values:
            return None
        items = [item for v in values for item in (v if isinstance(v, list) else [v])]
        calls = []
        for item in items:
            if not isinstance(item, dict):
                return None
            call = make_call(item.get("name"), item.get("arguments", {}))
            if call is None:
                return None
            if isinstance(item.get("id"), str) and re.fullmatch(r"[A-Za-z0-9]{9}", item["id"]):
                call.id = item["id"]  # the id the model wrote, so the result can name it
            calls.append(call)
        return calls


_DEEPSEEK_CALL = re.compile(
    r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)(?:<｜tool▁call▁end｜>|$)", re.DOTALL
)
_FENCED = re.compile(r"(.*?)\n```(?:json)?\n(.*?)\n?```\s*$", re.DOTALL)


class DeepSeekToolParser(ToolParser):
    """DeepSeek V3/R1 tool-call tokens (V3.1's unfenced `name<｜tool▁sep｜>{...}` too)."""

    name = "deepseek3"
    open, close = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
    call_start = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>"

    def extractor(self) -> TaggedExtractor:
        return TaggedExtractor(self.open, self.close, self.parse_block)

    def forced_prefix(self, function: str | None) -> str:
        start = self.open + self.call_start
        return start if function is None else f"{start}{function}\n```json\n"

    @staticmethod
    def parse_block(body: str) -> list[ToolCall] | None:
        found = _DEEPSEEK_CALL.findall(body)
        if not found or _DEEPSEEK_CALL.sub("", body).strip():
            return None  # no call, or text between the calls that is not one
        calls = []
        for head, rest in found:
            fenced = _FENCED.match(rest)
            if fenced and head.strip() == "function":  # V3: type, then name and fenced JSON
                name, arguments = fenced.group(1), fenced.group(2)
            else:  # V3.1: name, then the JSON
                name, arguments = head, rest
            call = make_call(name.strip(), arguments.strip())
            if call is None:
                return None
            calls.append(call)
        return calls


PARSERS: dict[str, ToolParser] = {
    p.name: p
    for p in (
        QwenToolParser(),
        ReActToolParser(),
        Glm4ToolParser(),
        Llama3ToolParser(),
        MistralToolParser("mistral", " "),
        MistralToolParser("mistral_nemo", ""),
        DeepSeekToolParser(),
    )
}


def get_tool_parser(name: str) -> ToolParser:
    # Formats the writer knows but we cannot read yet fall back to the Hermes tags.
    return PARSERS.get(name, PARSERS["qwen"])


class TaggedExtractor:
    """Calls between open/close tags; content outside them streams through."""

    def __init__(self, open_tag: str, close_tag: str, parse_block):
        self.open, self.close = open_tag, close_tag
        self.parse_block = parse_block  # body -> [ToolCall, ...] or None
        self.splitter = MarkerSplitter(open_tag, close_tag)
        self.body = ""

    def feed(self, text: str) -> list[Event]:
        return self._events(self.splitter.feed(text))

    def finish(self) -> list[Event]:
        events = self._events(self.splitter.flush())
        if self.splitter.inside and self.body.strip():
            # Cut off before the closing tag (EOS or max_tokens): keep it if it parses.
            calls = self.parse_block(self.body)
            if calls:
                events += [("tool_call", c) for c in calls]
            else:
                events.append(("content", self.open + self.body))
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
                calls = self.parse_block(self.body)
                if calls:
                    events += [("tool_call", c) for c in calls]
                else:
                    events.append(("content", self.open + self.body + self.close))
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


class StartExtractor:
    """Calls that make up the rest of the answer, recognised by how the answer starts (after
    whitespace: one of `starts`) or, with `marker`, wherever the marker appears; content before
    it streams, the rest is held and parsed at the end (given back as content if it does not
    parse)."""

    def __init__(self, starts: tuple[str, ...], parse_tail, marker: str | None = None):
        self.starts = starts
        self.tail_extractor = TailExtractor(marker, parse_tail) if marker else None
        self.parse_tail = parse_tail
        self.head = ""  # leading text while it may still be the start of a call
        self.decided: str | None = None  # "call" | "content"
        self.tail = ""

    def feed(self, text: str) -> list[Event]:
        if self.decided == "call":
            self.tail += text
            return []
        if self.decided == "content":
            return self._content(text)
        self.head += text
        lead = self.head.lstrip()
        if not lead:
            return []
        if any(lead.startswith(s) for s in self.starts):
            self.decided, self.tail, self.head = "call", self.head, ""
            return []
        if any(s.startswith(lead) for s in self.starts):
            return []  # still could be the start of a call
        self.decided = "content"
        head, self.head = self.head, ""
        return self._content(head)

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self.decided == "call":
            calls = self.parse_tail(self.tail)
            events = [("tool_call", c) for c in calls] if calls else [("content", self.tail)]
        elif self.decided == "content" and self.tail_extractor:
            events = self.tail_extractor.finish()
        elif self.head:
            events = [("content", self.head)]
        self.head, self.tail, self.decided = "", "", None
        return events

    def _content(self, text: str) -> list[Event]:
        if self.tail_extractor:
            return self.tail_extractor.feed(text)
        return [("content", text)] if text else []
