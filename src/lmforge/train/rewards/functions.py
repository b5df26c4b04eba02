"""Rewards for GRPO: built-in checks against a reference answer, and the user's own functions.

`reward_funcs` is a comma-separated list; each item is a built-in name or the user's own
function, `path/to/file.py:function` (relative to the YAML file) or `module:function` (a file in
the YAML's folder), with an optional weight as `item*weight`. The total reward of a completion
is the weighted sum of its terms. Names that resolve to the standard library, a built-in module
or an installed package are refused.

A user function has TRL's shape, called with keywords:
    func(prompts: list[str], completions: list[str], completion_ids: list[list[int]],
         **columns) -> list[float | None]
`prompts` are the final user messages, `completions` the generated answers as text, and
`columns` every column of the dataset record (one list entry per completion), with
`answer_column` filled from the sample's reference answer when the record has no such column.
A None reward counts as 0.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from lmforge.errors import UserError
from lmforge.suggest import did_you_mean

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
    """`path/to/file.py:function` or `module:function` -> the function.

    Only the user's own files are loaded: a path (relative to `base_dir`, the YAML's folder, or
    the current folder), or a module name resolved in `base_dir` alone (`pkg.mod` is
    pkg/mod.py there). A name that resolves to Python's standard library, a built-in module or
    an installed package is refused, so `os:system` or `builtins:eval` never become rewards.
    Each file is executed once per process while it is unchanged (see _load_file)."""
    module_name, _, func_name = value.rpartition(":")
    if not module_name or not func_name:
        raise UserError(
            f"reward_funcs: `{value}` must be written module:function",
            where=where,
            fix="e.g. reward_funcs: my_rewards:length_reward (or path/to/file.py:length_reward)",
        )
    if module_name.endswith(".py"):
        path = _named_file(value, module_name, base_dir, where)
    else:
        path = _module_file(value, module_name, base_dir, where)
    _refuse_installed_file(value, path, where)
    module = _load_file(value, path, where)
    func = getattr(module, func_name, None)
    if func is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        hint = did_you_mean(func_name, names, show=lambda name: f"{module_name}:{name}")
        raise UserError(
            f"reward_funcs: `{value}`: module `{module_name}` has no `{func_name}`",
            where=where,
            fix=f"{hint}define `{SIGNATURE.replace('NAME', func_name)}` in it, or correct the name",
        )
    if not callable(func):
        raise UserError(
            f"reward_funcs: `{value}`: `{func_name}` is a {type(func).__name__}, not a function",
            where=where,
            fix=f"point at a function: {SIGNATURE}",
        )
    return func


_OWN_FILE_FIX = (
    "write the function in a .py file of yours (beside the YAML file) and name it "
    "file.py:function or file:function; to use a library, import it in that file"
)


def _named_file(value: str, file_name: str, base_dir: Path | None, where: str | None) -> Path:
    path = Path(file_name).expanduser()
    candidates = [path] if path.is_absolute() else [(base_dir or Path.cwd()) / path, path]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise UserError(
            f"reward_funcs: `{value}`: file {candidates[0]} does not exist",
            where=where,
            fix="give the path of the .py file, relative to the YAML file or absolute",
        )
    return found.resolve()


def _module_file(value: str, module_name: str, base_dir: Path | None, where: str | None) -> Path:
    """`a.b` -> base_dir/a/b.py or base_dir/a/b/__init__.py; else say what the name is."""
    parts = module_name.split(".")
    if not all(part.isidentifier() for part in parts):
        raise UserError(
            f"reward_funcs: `{value}`: `{module_name}` is not a module name",
            where=where,
            fix="write module:function (a .py file in the YAML's folder, without .py) or "
            "path/to/file.py:function",
        )
    folder = (base_dir or Path.cwd()).joinpath(*parts)
    for candidate in (folder.with_suffix(".py"), folder / "__init__.py"):
        if candidate.is_file():
            return candidate.resolve()
    top = parts[0]
    origin = _found_elsewhere(top)
    kind = _installed_kind(top, origin)
    if kind:
        raise UserError(
            f"reward_funcs: `{value}` names `{top}`, {kind}; reward functions are loaded only "
            "from your own files",
            where=where,
            fix=_OWN_FILE_FIX,
        )
    elsewhere = f" (the `{top}` at {origin} is not looked up)" if origin else ""
    raise UserError(
        f"reward_funcs: `{value}`: cannot import module `{module_name}`: there is no "
        f"{folder.with_suffix('.py')}{elsewhere}",
        where=where,
        fix="put the module beside the YAML file, or give the file itself: "
        "path/to/file.py:function",
    )


def _found_elsewhere(top: str) -> Path | None:
    """Where Python's import system would find a top-level module (found, not executed)."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return Path(spec.origin).resolve()
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]).resolve() if locations else None


def _installed_kind(top: str, origin: Path | None) -> str | None:
    """What a top-level module name that is no file of the user's is, if it is Python's or an
    installed package's."""
    if top == "builtins" or top in sys.builtin_module_names:
        return "a module built into Python"
    if top in sys.stdlib_module_names:
        return "a module of Python's standard library"
    if origin is not None and _is_installed(origin):
        return "an installed package"
    return None


def _installed_dirs() -> list[Path]:
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    dirs = [paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    dirs += [*site.getsitepackages(), site.getusersitepackages()]
    return [Path(d).resolve() for d in dirs if d]


def _is_installed(path: Path) -> bool:
    return any(path.is_relative_to(folder) for folder in _installed_dirs())


def _refuse_installed_file(value: str, path: Path, where: str | None) -> None:
    if _is_installed(path):
        raise UserError(
            f"reward_funcs: `{value}` is {path}, a file of Python's standard library or "
            "of an installed package; reward functions are loaded only from your own files",
            where=where,
            fix=_OWN_FILE_FIX,
        )


# file -> ((modification time, size), module): check, stage and trainer all ask for the terms,
# and a file's top-level code (loading data, counters) must run once, not once per asker.
_LOADED: dict[Path, tuple[tuple[int, int], ModuleType]] = {}


def _load_file(value: str, path: Path, where: str | None) -> ModuleType:
    """Execute the file as a module of its own (its folder first on sys.path meanwhile, as
    when it runs as a script, so it can import modules beside it); again only once it has
    changed."""
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _LOADED.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"lmforge_rewards_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise _failed_import(value, error, where) from None
    finally:
        if str(path.parent) in sys.path:
            sys.path.remove(str(path.parent))
    _LOADED[path] = (stamp, module)
    return module


def _failed_import(value: str, error: Exception, where: str | None) -> UserError:
    return UserError(
        f"reward_funcs: `{value}`: importing it failed with {type(error).__name__}: {error}",
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
            hint = did_you_mean(name, BUILTINS)
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
