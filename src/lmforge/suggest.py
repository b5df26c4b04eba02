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


def closest_key(name: str, known: Iterable[str]) -> str | None:
    """The config key `name` was most likely a misspelling of, or None.

    Only a typo is corrected, never a meaning: the two keys must have the same words (split at
    `_`) with at most one of them misspelt by an edit or two (a swap counts as one), or differ
    only by an underscore. A key whose first word names a family of keys (`lora_`, `swanlab_`,
    `use_`, ...) is compared with that family only. So `lora_rnak` -> `lora_rank` and
    `learning_rat` -> `learning_rate`, but `use_swanlab` never gets `use_rslora`, `logging_dir`
    never `logging_first_step`, and `swanlab_project` never `project`.
    """
    name = str(name).strip().lower()
    known = sorted(set(known))
    families = _families(known)
    words = name.split("_")
    best: tuple[int, str] | None = None
    for key in known:
        key_words = key.split("_")
        if words[0] in families and key_words[0] != words[0]:
            continue
        distance = _key_distance(name, words, key, key_words)
        if distance is not None and (best is None or distance < best[0]):
            best = (distance, key)
    return best[1] if best else None


def _families(known: list[str]) -> set[str]:
    """First words shared by two or more keys (`lora`, `swanlab`, `use`, `ppo`, ...)."""
    counts: dict[str, int] = {}
    for key in known:
        if "_" in key:
            first = key.split("_", 1)[0]
            counts[first] = counts.get(first, 0) + 1
    return {first for first, count in counts.items() if count >= 2}


def _key_distance(name: str, words: list[str], key: str, key_words: list[str]) -> int | None:
    if name == key:
        return None
    if name.replace("_", "") == key.replace("_", ""):
        return 1  # `learningrate`, `lora__rank`
    if len(words) != len(key_words):
        return None
    changed = [(a, b) for a, b in zip(words, key_words) if a != b]
    if len(changed) != 1:
        return None
    a, b = changed[0]
    distance = _edit_distance(a, b)
    allowed = 1 if min(len(a), len(b)) <= 4 else 2
    if distance > allowed or distance * 2 >= max(len(a), len(b)):
        return None
    return distance


def _edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap of two neighbours) turning `a` into `b`."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[len(b)]
