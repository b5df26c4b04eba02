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
            lines.append(f"| `{f.name}` | {_type_text(hints[f.name])} | `{default}` | {doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference_markdown())
