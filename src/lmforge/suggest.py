"""Did-you-mean suggestions: the one place that picks a close name for a mistyped one."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, known: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The known name closest in spelling to `name`, if one is close enough."""
    matches = difflib.get_close_matches(str(name), sorted(set(known)), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def did_you_mean(name: str, known: Iterable[str], *, cutoff: float = 0.6, show=None) -> str:
    """The text "did you mean `x`? " (with a trailing space), or "" when nothing is close. `show` turns
    the match into the text shown (e.g. `module:name`)."""
    match = closest(name, known, cutoff=cutoff)
    if match is None:
        return ""
    return f"did you mean `{show(match) if show else match}`? "
