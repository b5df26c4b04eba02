"""The prompts synth sends, read from data files: prompts/en.yaml and prompts/zh.yaml, each key
replaceable by the same key in the user's `prompt_dir`/{en,zh}.yaml. Placeholders are Python
format fields ({text}, {count}, {question}, ...; `{{` for a literal brace)."""

from __future__ import annotations

import functools
import string
from pathlib import Path

import yaml

from lmforge.errors import UserError

LANGUAGES = ("en", "zh")
_BUILT_IN = Path(__file__).with_name("prompts")
# prompt key -> the placeholders it may use
FIELDS = {
    "system": set(),
    "questions": {"count", "text"},
    "answer": {"text", "question", "style"},
    "answer_cot": {"text", "question", "style"},
    "style_concise": set(),
    "style_detailed": set(),
    "score": {"text", "question", "answer"},
    "augment": {"count", "conversation"},
    "strict": set(),
}


@functools.cache
def _built_in(language: str) -> dict[str, str]:
    return yaml.safe_load((_BUILT_IN / f"{language}.yaml").read_text(encoding="utf-8"))


def load_prompts(prompt_dir: str | None, where: str | None = None) -> dict[str, dict[str, str]]:
    """language -> prompt key -> text, the user's keys over the built-in ones."""
    prompts = {language: dict(_built_in(language)) for language in LANGUAGES}
    if prompt_dir is None:
        return prompts
    folder = Path(prompt_dir)
    if not folder.is_dir():
        raise UserError(
            f"`prompt_dir: {prompt_dir}` is not a folder",
            where=where,
            fix="give a folder holding en.yaml and/or zh.yaml (copies of "
            "src/lmforge/synth/prompts/*.yaml with your changes)",
        )
    files = [folder / f"{language}.yaml" for language in LANGUAGES]
    if not any(f.exists() for f in files):
        raise UserError(
            f"`prompt_dir: {prompt_dir}` holds neither en.yaml nor zh.yaml",
            where=where,
            fix="put en.yaml and/or zh.yaml there, with the prompt keys you change",
        )
    for language, path in zip(LANGUAGES, files):
        if not path.exists():
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path} is not valid YAML: {exc}", fix="correct the file") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} is not a mapping of prompt names to texts", fix=_KEYS_FIX)
        for key, text in data.items():
            _check(path, key, text)
            prompts[language][key] = text
    return prompts


_KEYS_FIX = f"use the keys {', '.join(FIELDS)} (docs/synth.md)"


def _check(path: Path, key: str, text) -> None:
    if key not in FIELDS:
        raise UserError(f"{path}: unknown prompt `{key}`", fix=_KEYS_FIX)
    if not isinstance(text, str):
        raise UserError(f"{path}: prompt `{key}` is not text", fix="write it as a YAML string")
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise UserError(
            f"{path}: prompt `{key}` has a broken placeholder ({exc})",
            fix="write a literal brace as {{ or }}",
        ) from None
    extra = used - FIELDS[key]
    if extra:
        allowed = ", ".join("{" + f + "}" for f in sorted(FIELDS[key])) or "none"
        raise UserError(
            f"{path}: prompt `{key}` uses {', '.join('{' + e + '}' for e in sorted(extra))}, "
            f"which it is not given",
            fix=f"placeholders of `{key}`: {allowed}; a literal brace is {{{{ or }}}}",
        )


def detect_language(text: str) -> str:
    """zh when at least a fifth of the letters are CJK ideographs, else en."""
    cjk = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    letters = sum(1 for ch in text if ch.isalpha())
    return "zh" if letters and cjk / letters >= 0.2 else "en"
