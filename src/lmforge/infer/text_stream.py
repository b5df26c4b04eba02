"""Token ids -> text pieces, as they are generated, cut at the first stop string.

Decoding token by token is wrong for byte-level tokenizers (one character can span tokens) and
for sentencepiece (a token's leading space depends on its neighbour), so each step decodes a
short window and emits only what is new and complete. Text that might be the start of a stop
string is held back until it is clear that it is not.
"""

from __future__ import annotations


class IncrementalDecoder:
    """Text deltas from a growing list of ids (the prefix/read-offset method of TGI and vLLM)."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        skip = self.skip_special_tokens
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=skip)
        full = decode(self.ids[self.prefix_offset :], skip_special_tokens=skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full[len(prefix) :]
        return ""  # an incomplete character, or a token that decodes to nothing


class StopStringFilter:
    """Passes text through until a stop string appears; never emits part of a stop string."""

    def __init__(self, stop: tuple[str, ...] | list[str]):
        self.stop = [s for s in stop if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stop:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        keep = self._partial_suffix()
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out

    def _partial_suffix(self) -> int:
        """Length of the longest end of `pending` that begins some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if s.startswith(self.pending[-n:]):
                    best = n
                    break
        return best
