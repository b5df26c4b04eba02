"""A document's text -> chunks, Markdown-aware, each with its character span.

The text is cut into blocks first: a heading starts a new section; inside a section, blank lines
separate paragraphs; a fenced code block and a table are one block each, never cut. Blocks are
then packed into chunks of at most `max_chars` (a section never shares a chunk with the next
one unless it is shorter than `min_chars`); a single paragraph longer than `max_chars` is cut at
sentence ends, then at `max_chars`. `overlap` characters of the previous chunk are repeated at
the start of the next as context (the span then starts earlier). Every chunk is
`text[start:end]` of the document, so its provenance is exact.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

_HEADING = re.compile(r"^ {0,3}#{1,6}\s")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_TABLE_ROW = re.compile(r"^\s*\|")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s*")


@dataclass(frozen=True)
class Chunk:
    document: str  # the document's name (path relative to where it was found)
    index: int  # position in the document
    start: int  # character span in the document's text
    end: int
    text: str

    @property
    def id(self) -> str:
        """Stable across runs: the document, the position and the text itself."""
        digest = hashlib.sha256(f"{self.document}\0{self.start}\0{self.text}".encode()).hexdigest()
        return f"{self.document}#{self.index}-{digest[:10]}"


@dataclass(frozen=True)
class _Block:
    start: int
    end: int
    heading: bool  # starts a section
    atomic: bool  # table or code block: never cut


def split_chunks(
    document: str, text: str, *, min_chars: int, max_chars: int, overlap: int = 0
) -> Iterator[Chunk]:
    boundaries: list[int] = []  # where a block or a sentence starts: where an overlap may
    spans = list(_pack(_blocks(text), text, min_chars, max_chars, boundaries))
    boundaries.sort()
    for index, (start, end) in enumerate(spans):
        if overlap and index > 0:
            start = _overlap_start(boundaries, start, overlap)
        piece = text[start:end]
        lead = len(piece) - len(piece.lstrip())
        tail = len(piece.rstrip())
        if tail <= lead:
            continue
        yield Chunk(document, index, start + lead, start + tail, piece[lead:tail])


def _overlap_start(boundaries: list[int], start: int, overlap: int) -> int:
    """The earliest block or sentence start within `overlap` characters before `start` (never
    inside a table or code block), else `start`."""
    i = bisect.bisect_left(boundaries, start - overlap)
    return boundaries[i] if i < len(boundaries) and boundaries[i] < start else start


def _blocks(text: str) -> list[_Block]:
    """Paragraphs, headings, code blocks and tables, as spans of `text`."""
    blocks: list[_Block] = []
    lines = text.splitlines(keepends=True)
    offsets, position = [], 0
    for line in lines:
        offsets.append(position)
        position += len(line)
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        start = offsets[i]
        fence = _FENCE.match(line)
        if fence:
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith(fence.group(1)):
                j += 1
            j = min(j + 1, len(lines))
            blocks.append(_Block(start, offsets[j - 1] + len(lines[j - 1]), False, True))
            i = j
            continue
        if _TABLE_ROW.match(line):
            j = i
            while j < len(lines) and _TABLE_ROW.match(lines[j]):
                j += 1
            blocks.append(_Block(start, offsets[j - 1] + len(lines[j - 1]), False, True))
            i = j
            continue
        if _HEADING.match(line):
            blocks.append(_Block(start, start + len(line), True, False))
            i += 1
            continue
        j = i + 1
        while (
            j < len(lines)
            and lines[j].strip()
            and not _HEADING.match(lines[j])
            and not _FENCE.match(lines[j])
            and not _TABLE_ROW.match(lines[j])
        ):
            j += 1
        blocks.append(_Block(start, offsets[j - 1] + len(lines[j - 1]), False, False))
        i = j
    return blocks


def _pack(
    blocks: list[_Block], text: str, min_chars: int, max_chars: int, boundaries: list[int]
) -> Iterator[tuple]:
    """Chunk spans: blocks joined up to max_chars, a new chunk at each heading once the current
    one has min_chars; a long paragraph cut at sentence ends."""
    current: tuple[int, int] | None = None
    for block in blocks:
        if not block.atomic:
            boundaries += [m.end() for m in _SENTENCE_END.finditer(text, block.start, block.end)]
        pieces = (
            [(block.start, block.end)]
            if block.atomic or block.end - block.start <= max_chars
            else list(_cut(text, block.start, block.end, max_chars))
        )
        for start, end in pieces:
            boundaries.append(start)
            if current is None:
                current = (start, end)
                continue
            size = current[1] - current[0]
            new_section = block.heading and size >= min_chars
            # (a chunk under min_chars that cannot join the next without passing max_chars
            # stands alone)
            if new_section or end - current[0] > max_chars:
                yield current
                current = (start, end)
            else:
                current = (current[0], end)
    if current is not None:
        yield current


def _cut(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    """A paragraph longer than max_chars, cut at sentence ends (else hard at max_chars)."""
    piece_start = start
    while end - piece_start > max_chars:
        limit = piece_start + max_chars
        cut = None
        for match in _SENTENCE_END.finditer(text, piece_start, limit):
            if match.end() > piece_start:
                cut = match.end()
        if cut is None or cut <= piece_start:
            cut = limit
        yield piece_start, cut
        piece_start = cut
    if end > piece_start:
        yield piece_start, end
