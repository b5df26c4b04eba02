"""Rewards for GRPO: built-in checks against a reference answer, and the user's own functions.

`reward_funcs` is a comma-separated list; each item is a built-in name or `module:function`
(`file.py:function` also works, relative to the YAML file), with an optional weight as
`item*weight`. The total reward of a completion is the weighted sum of its terms.

A user function has TRL's shape, called with keywords:
    func(prompts: list[str], completions: list[str], completion_ids: list[list[int]],
         **columns) -> list[float | None]
`prompts` are the final user messages, `completions` the generated answers as text, and
`columns` every column of the dataset record (one list entry per completion), with
`answer_column` filled from the sample's reference answer when the record has no such column.
A None reward counts as 0.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import UserError

BUILTINS = ("exact_match", "regex_match", "numeric_match")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
SIGNATURE = "def NAME(prompts, completions, **columns) -> list[float]"


@dataclass
class RewardBatch:
    """What every reward term sees: one entry per completion."""

    prompts: list[str]  # the final user message
    completions: list[str]
    completion_ids: list[list[int]]
    references: list[str | None]  # the reference answer, when the data has one
    columns: dict[str, list] = field(default_factory=dict)  # the record's columns
    conversations: list[dict] = field(default_factory=list)  # messages, system, tools


@dataclass
class RewardTerm:
    name: str
    score: Callable[[RewardBatch], list]  # RewardBatch -> one reward per completion
    weight: float = 1.0


# ---- built-in checks ------------------------------------------------------------------------


def normalise(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def exact_match(completion: str, reference: str | None) -> float:
    """1 when the texts are equal up to whitespace and letter case."""
    if reference is None:
        return 0.0
    return float(normalise(completion) == normalise(reference))


def last_number(text: str) -> float | None:
    """The last number written in the text (1,234.5 and -3 included), or None."""
    found = _NUMBER.findall(str(text))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_match(completion: str, reference: str | None) -> float:
    """1 when the last number of the completion equals the last number of the reference (so a
    GSM8K answer "... #### 72" compares 72)."""
    if reference is None:
        return 0.0
    got, want = last_number(completion), last_number(reference)
    if got is None or want is None:
        return 0.0
    return float(math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))


def regex_match(completion: str, pattern: re.Pattern | str | None) -> float:
    """1 when the pattern is found in the completion (re.search: anchor with ^...$ for all)."""
    if pattern is None:
        return 0.0
    try:
        return float(re.search(pattern, completion) is not None)
    except re.error:
        return 0.0


def _builtin_term(name: str, reward_regex: str | None, where: str | None) -> Callable:
    if name == "exact_match":
        return lambda b: [exact_match(c, r) for c, r in zip(b.completions, b.references)]
    if name == "numeric_match":
        return lambda b: [numeric_match(c, r) for c, r in zip(b.completions, b.references)]
    if reward_regex is None:  # each sample's reference answer is its own pattern
        return lambda b: [regex_match(c, r) for c, r in zip(b.completions, b.references)]
    try:
        pattern = re.compile(reward_regex)
    except re.error as error:
        raise UserError(
            f"reward_regex `{reward_regex}` is not a valid regular expression ({error})",
            where=where,
            fix="correct the pattern (Python `re` syntax; quote it in YAML)",
        ) from None
    return lambda b: [regex_match(c, pattern) for c in b.completions]


# ---- the user's functions -------------------------------------------------------------------


def import_reward_function(value: str, base_dir: Path | None = None, where: str | None = None):
    """`package.module:function` or `path/to/file.py:function` -> the function."""
    module_name, _, func_name = value.rpartition(":")
    if not module_name or not func_name:
        raise UserError(
            f"reward function `{value}` must be written module:function",
            where=where,
            fix="e.g. reward_funcs: my_rewards:length_reward (or path/to/file.py:length_reward)",
        )
    if module_name.endswith(".py"):
        module = _import_file(value, module_name, base_dir, where)
    else:
        module = _import_module(value, module_name, base_dir, where)
    func = getattr(module, func_name, None)
    if func is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(func_name, names, n=1)
        hint = f"did you mean `{module_name}:{close[0]}`? " if close else ""
        raise UserError(
            f"reward function `{value}`: module `{module_name}` has no `{func_name}`",
            where=where,
            fix=f"{hint}define `{SIGNATURE.replace('NAME', func_name)}` in it, or correct the name",
        )
    if not callable(func):
        raise UserError(
            f"reward function `{value}`: `{func_name}` is a {type(func).__name__}, not a function",
            where=where,
            fix=f"point at a function: {SIGNATURE}",
        )
    return func


def _import_module(value: str, module_name: str, base_dir: Path | None, where: str | None):
    # The YAML's folder and the current folder come first, so a rewards.py beside the config
    # imports without installing anything.
    extra = [str(p) for p in (base_dir, Path.cwd()) if p is not None and str(p) not in sys.path]
    sys.path[:0] = extra
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise UserError(
                f"reward function `{value}`: cannot import module `{module_name}`",
                where=where,
                fix="put the module beside the YAML file or in the current folder, add its folder "
                "to PYTHONPATH, or give the file itself: path/to/file.py:function",
            ) from None
        raise _failed_import(value, error, where) from None
    except Exception as error:  # the user's module itself failed: say so, with its error
        raise _failed_import(value, error, where) from None
    finally:
        for path in extra:
            if path in sys.path:
                sys.path.remove(path)


def _import_file(value: str, file_name: str, base_dir: Path | None, where: str | None):
    path = Path(file_name).expanduser()
    candidates = [path] if path.is_absolute() else [(base_dir or Path.cwd()) / path, path]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UserError(
            f"reward function `{value}`: file {candidates[0]} does not exist",
            where=where,
            fix="give the path of the .py file, relative to the YAML file or absolute",
        )
    name = f"lmforge_rewards_{found.stem}"
    spec = importlib.util.spec_from_file_location(name, found)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise _failed_import(value, error, where) from None
    sys.modules[name] = module
    return module


def _failed_import(value: str, error: Exception, where: str | None) -> UserError:
    return UserError(
        f"reward function `{value}`: importing it failed with {type(error).__name__}: {error}",
        where=where,
        fix="fix the error in that module (or install what it imports), then run again",
    )


def user_term(func: Callable, name: str) -> Callable[[RewardBatch], list]:
    def score(batch: RewardBatch) -> list:
        values = func(
            prompts=batch.prompts,
            completions=batch.completions,
            completion_ids=batch.completion_ids,
            **batch.columns,
        )
        values = list(values) if values is not None else []
        if len(values) != len(batch.completions):
            raise UserError(
                f"reward function `{name}` returned {len(values)} rewards for "
                f"{len(batch.completions)} completions",
                fix="return one float (or None) per completion, in order",
            )
        return values

    return score


# ---- the list in the config -----------------------------------------------------------------


def parse_reward_funcs(value: str | None) -> list[tuple[str, float]]:
    """`a, b*0.5` -> [("a", 1.0), ("b", 0.5)]."""
    items = []
    for raw in (value or "").split(","):
        item = raw.strip()
        if not item:
            continue
        name, weight = item, 1.0
        if "*" in item:
            head, _, tail = item.rpartition("*")
            try:
                name, weight = head.strip(), float(tail)
            except ValueError:
                raise UserError(
                    f"reward_funcs: `{item}` has a weight that is not a number",
                    fix="write name*weight, e.g. numeric_match*2",
                ) from None
        items.append((name, weight))
    return items


def build_reward_terms(method, source: str | None = None) -> list[RewardTerm]:
    """The terms of `reward_funcs`, each checked and imported now (before any model loads)."""
    base_dir = Path(source).resolve().parent if source else None
    terms = []
    for name, weight in parse_reward_funcs(method.reward_funcs):
        if ":" in name:
            func = import_reward_function(name, base_dir, source)
            terms.append(RewardTerm(name, user_term(func, name), weight))
        elif name in BUILTINS:
            terms.append(RewardTerm(name, _builtin_term(name, method.reward_regex, source), weight))
        else:
            close = difflib.get_close_matches(name, BUILTINS, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            raise UserError(
                f"unknown reward `{name}` in reward_funcs",
                where=source,
                fix=f"{hint}use {', '.join(BUILTINS)}, or module:function for your own",
            )
    return terms


def score_terms(terms: list[RewardTerm], batch: RewardBatch) -> tuple[list[float], dict]:
    """(total reward per completion, {term name: its rewards}); None counts as 0."""
    totals = [0.0] * len(batch.completions)
    per_term: dict[str, list[float]] = {}
    for term in terms:
        values = [_as_float(v, term.name) for v in term.score(batch)]
        per_term[term.name] = values
        totals = [t + term.weight * v for t, v in zip(totals, values)]
    return totals, per_term


def _as_float(value: Any, name: str) -> float:
    if value is None:
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(
            f"reward function `{name}` returned {value!r}, which is not a number",
            fix="return floats (or None) only",
        ) from None
    return 0.0 if math.isnan(number) else number
