"""docs/config.md, generated from the schema so the reference never drifts from the code.

Regenerate with: python -m lmforge.config.docs > docs/config.md
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields

from lmforge.config.schema import SECTIONS


def _type_text(hint) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    name = getattr(base, "__name__", str(base))
    return f"{name} or null" if args else name


def config_reference_markdown() -> str:
    lines = [
        "# Configuration keys",
        "",
        "Generated from `src/lmforge/config/schema.py` (`python -m lmforge.config.docs`).",
        "Keys are LLaMA-Factory's; put them in one flat YAML file, or override them on the",
        "command line with `key=value` or `--key value` (`key=null` unsets an optional key).",
        "Other `transformers.TrainingArguments` keys are passed through unchanged.",
        "",
        "Every file and value is checked before anything is loaded; a problem stops the command",
        "with one paragraph (what, where, the fix) and exit code 2: a missing file or a folder",
        "(with the YAML file in it suggested), text that is not UTF-8 (the byte, its offset and",
        "line; UTF-16/UTF-32 with a byte order mark is read), invalid YAML (line and column), a",
        "key given twice (both lines), aliases that expand past 100,000 values or refer to",
        "themselves, an unknown key (with the closest known one), a value of the wrong type, not",
        "one of a key's choices, or outside its allowed values (the `Allowed` ranges below,",
        "naming the key, the value, and the file or command line that set it).",
        "",
    ]
    for section_name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        lines += [f"## {section_name}: {cls.__doc__.strip()}", ""]
        lines += ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
        for f in fields(cls):
            default = f.default if f.default is not MISSING else "-"
            doc = f.metadata["help"]
            if f.metadata.get("choices"):
                doc += f" One of: {', '.join(f.metadata['choices'])}."
            if f.metadata.get("bounds"):
                doc += f" Allowed: {f.metadata['bounds'].describe()}."
            lines.append(f"| `{f.name}` | {_type_text(hints[f.name])} | `{default}` | {doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference_markdown())
