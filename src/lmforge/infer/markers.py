"""Split streamed text at open/close markers (`<think>...</think>`, `<tool_call>...</tool_call>`).

Pieces arrive in arbitrary cuts (`<thi` + `nk>`), so text that could be the start of the next
marker is held back until the following piece decides it.
"""

from __future__ import annotations


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class MarkerSplitter:
    """Feeds text, returns (inside, text) segments; `inside` is True between open and close."""

    def __init__(self, open_marker: str, close_marker: str, *, inside: bool = False):
        self.open = open_marker
        self.close = close_marker
        self.inside = inside
        self.pending = ""

    def feed(self, text: str) -> list[tuple[bool, str]]:
        self.pending += text
        out: list[tuple[bool, str]] = []
        while True:
            marker = self.close if self.inside else self.open
            at = self.pending.find(marker)
            if at < 0:
                keep = partial_suffix(self.pending, marker)
                head = self.pending[: len(self.pending) - keep]
                self.pending = self.pending[len(self.pending) - keep :]
                if head:
                    out.append((self.inside, head))
                return out
            if at:
                out.append((self.inside, self.pending[:at]))
            # An empty segment marks the boundary, so callers can see a block close.
            out.append((self.inside, ""))
            self.pending = self.pending[at + len(marker) :]
            self.inside = not self.inside

    def flush(self) -> list[tuple[bool, str]]:
        text, self.pending = self.pending, ""
        return [(self.inside, text)] if text else []
