"""docs/config.md, generated from the schema so the reference never drifts from the code.

Regenerate with: python -m lmforge.config.docs > docs/config.md
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields

from lmforge.config.load import llamafactory_keys
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
        "Keys are LLaMA-Factory's; put them in one flat YAML file, give them as flags alone",
        "(`lmforge train --stage sft --model_name_or_path gemma-3-270m ...`, as",
        "`llamafactory-cli train` takes them), or both: `key=value` or `--key value` after the",
        "file override it (`key=null` unsets an optional key). Other",
        "`transformers.TrainingArguments` keys are passed through unchanged. Every other key",
        "LLaMA-Factory 0.9 accepts is accepted too; the ones that do nothing here are listed at",
        "the end, and the run plan names each one given, with the reason.",
        "",
        "Relative paths are read as LLaMA-Factory reads them, from the working directory; an",
        "input (model, adapter, dataset folder, DeepSpeed config, ...) that exists only next to",
        "the YAML file is read from there. Outputs (`output_dir`, `logging_dir`,",
        "`swanlab_logdir`) always go under the working directory, so `lmforge train` and then",
        "`lmforge chat` with `adapter_name_or_path: saves/...`, run from the same folder, meet.",
        "",
        "Every file and value is checked before anything is loaded; a problem stops the command",
        "with one paragraph (what, where, the fix) and exit code 2: a missing file or a folder",
        "(with the YAML file in it suggested), text that is not UTF-8 (the byte, its offset and",
        "line; UTF-16/UTF-32 with a byte order mark is read), invalid YAML (line and column), a",
        "key given twice (both lines), aliases that expand past 100,000 values or refer to",
        "themselves, unknown keys (all of them in one error, each with a suggestion only where",
        "it is a typo of a known key), a value of the wrong type, not one of a key's choices,",
        "or outside its allowed values (the `Allowed` ranges below, naming the key, the value,",
        "and the file or command line that set it).",
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
    lines += _llamafactory_section()
    return "\n".join(lines)


def _llamafactory_section() -> list[str]:
    lf = llamafactory_keys()
    releases = lf.source["releases"]
    lines = [
        "## LLaMA-Factory keys that are renamed or not used",
        "",
        f"From LLaMA-Factory {releases[0]} to {releases[-1]} and main "
        f"({lf.source['main'][:8]}), and transformers {lf.source['transformers']}'s "
        "TrainingArguments (`src/lmforge/config/llamafactory_keys.yaml`). A renamed key is read "
        "as its new name. A key that is not used is accepted (its value is not checked) and "
        'named once in the run plan: "`key`: not used here, because ..." (not when it is '
        "false or null).",
        "",
        "| key | here |",
        "| --- | --- |",
    ]
    for key, target in sorted(lf.aliases.items()):
        lines.append(f"| `{key}` | read as `{target}` |")
    for key, reason in sorted(lf.not_used.items()):
        lines.append(f"| `{key}` | not used: {reason} |")
    lines.append("")
    return lines


if __name__ == "__main__":
    print(config_reference_markdown())
