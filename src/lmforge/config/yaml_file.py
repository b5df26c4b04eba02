"""Reading a config file: UTF-8 text holding one YAML mapping, refused clearly when it is not.

PyYAML's safe_load keeps the last of two equal keys without a word, lets undecodable bytes out
as a UnicodeDecodeError, and expands aliases without limit (a "billion laughs" file of a few
hundred bytes holds billions of values once anything walks it). Here each is a UserError naming
the file and the line: duplicate keys are checked while mappings are built, and the document's
size with every alias expanded is counted (shared nodes once) before anything is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import UserError
from lmforge.suggest import closest
from lmforge.text_encoding import bom_encoding

MAX_VALUES = 100_000  # values after expanding aliases; a real config has a few hundred
_MERGE = "tag:yaml.org,2002:merge"


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The `key: value` mapping of a config file ({} for an empty one)."""
    _check_file(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"cannot read config file {path} ({exc.strerror})",
            fix="check that the file is readable by you",
        ) from None
    data = parse_yaml(decode(path, raw), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"{path} must be a mapping of `key: value` lines, not a {type(data).__name__}",
            fix="see examples/quickstart/train.yaml for the shape",
        )
    return {str(k): v for k, v in data.items()}


def _check_file(path: Path) -> None:
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".yaml", ".yml"))
        if len(found) == 1:
            fix = f"did you mean {path / found[0]}? (give the YAML file, not its folder)"
        elif found:
            fix = f"give one of the YAML files in it: {', '.join(found)}"
        else:
            fix = "give the path of a YAML config file; example configs are under examples/"
        raise UserError(f"config {path} is a folder, not a YAML file", fix=fix)
    if not path.is_file():
        siblings = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
        close = closest(path.name, siblings)
        raise UserError(
            f"config file {path} does not exist",
            fix=f"did you mean {path.parent / close}?"
            if close
            else "check the path; example configs are under examples/",
        )


def decode(path: Path, raw: bytes) -> str:
    """The file's text: UTF-8 (a UTF-8, UTF-16 or UTF-32 byte order mark is honoured, as YAML
    allows); any other bytes are an error naming the byte, its offset and line."""
    codec, start = bom_encoding(raw[:4]) or ("utf-8", 0)
    try:
        text = raw[start:].decode(codec)
    except UnicodeDecodeError as exc:
        offset, end = start + exc.start, start + exc.end
        raise _encoding_error(path, raw, start, offset, end, codec, exc.reason) from None
    if "\x00" in text:  # valid UTF-8, but no YAML holds NUL: UTF-16/32 without a BOM
        offset = raw.index(b"\x00", start)
        raise _encoding_error(path, raw, start, offset, offset + 1, codec, "a NUL byte")
    return text


def _encoding_error(path, raw: bytes, start: int, offset: int, end: int, codec: str, reason: str):
    line = raw[start:offset].decode(codec, errors="replace").count("\n") + 1
    bad = " ".join(f"0x{b:02x}" for b in raw[offset:end])
    name = codec.upper().replace("-LE", " little-endian").replace("-BE", " big-endian")
    if reason == "a NUL byte":
        why = "a NUL byte: the file looks like UTF-16 or UTF-32 without a byte order mark"
        fix = "save the file as UTF-8 (in an editor: Save with Encoding -> UTF-8)"
    else:
        why = f"not valid {name} ({reason})"
        fix = "save the file as UTF-8 (from Latin-1/Windows-1252: `iconv -f cp1252 -t utf-8 "
        fix += "OLD.yaml > NEW.yaml`)"
    return UserError(
        f"{path} is not {name} text: {bad} at byte offset {offset} (line {line}) is {why}",
        fix=fix,
    )


def parse_yaml(text: str, source: str) -> Any:
    """One YAML document, read safely; `source` names it in errors (a file, the command line)."""
    loader = None
    try:
        loader = _ConfigLoader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, source)
        return loader.construct_document(node)
    except _DuplicateKey as exc:
        raise UserError(
            f"{source}: key `{exc.key}` is given twice, on lines {exc.lines[0]} and "
            f"{exc.lines[1]} (YAML would silently keep only the last)",
            fix="remove one of them",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(
            f"{source} is not valid YAML{line}: {problem}",
            fix="write one `key: value` per line (quote values that contain ': ' or '#')",
        ) from None
    except RecursionError:
        raise UserError(
            f"{source} nests values too deeply to read", fix="write a flat `key: value` file"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, lines: tuple[int, int]):
        super().__init__(key)
        self.key, self.lines = key, lines


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (`<<` merges may override)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                    continue
                line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    raise _DuplicateKey(key_node.value, (seen[key_node.value], line))
                seen[key_node.value] = line
        return super().construct_mapping(node, deep=deep)


def _check_size(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases expand past MAX_VALUES values, or refer to themselves.
    Each node's expanded size is computed once, so this takes time linear in the file."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            open_nodes.discard(key)
            if sizes[key] > MAX_VALUES:
                raise UserError(
                    f"{source}: its aliases (`*name`) expand to more than {MAX_VALUES:,} values "
                    f"(at line {node.start_mark.line + 1}); a config is refused rather than "
                    'expanded (a "billion laughs" file?)',
                    fix="write the values out, or use fewer nested aliases",
                )
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise UserError(
                f"{source}: an alias at line {node.start_mark.line + 1} refers to a value that "
                "contains it (a recursive structure)",
                fix="remove the recursive alias",
            )
        open_nodes.add(key)
        stack.append((node, True))
        stack += [(child, False) for child in _children(node) if id(child) not in sizes]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
