"""Which Unicode encoding a text file declares by its byte order mark (data files and configs)."""

from __future__ import annotations

import codecs

_BOMS = (  # UTF-32 first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def bom_encoding(head: bytes) -> tuple[str, int] | None:
    """(codec, length of the mark) when `head` starts with a byte order mark, else None."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec, len(bom)
    return None
