"""The config's synth keys -> checked, typed settings, before any document is read or any
request is sent. The `llm` mapping's values arrive as strings (config/load.py reads a mapping of
names to values); here each is given its type and bounds, and every problem names the sub-key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

from lmforge.config.schema import SYNTH_LLM_KEYS, Config
from lmforge.errors import UserError
from lmforge.suggest import closest_key

LLM_DEFAULTS = {
    "temperature": 0.7,
    "max_tokens": 2048,
    "timeout": 120.0,
    "concurrency": 4,
    "requests_per_minute": 0.0,
    "max_retries": 5,
    "retry_wait": 1.0,
}
_TYPES = {
    "temperature": (float, 0.0, 2.0),
    "max_tokens": (int, 1, None),
    "timeout": (float, 0.001, None),
    "concurrency": (int, 1, 1024),
    "requests_per_minute": (float, 0.0, None),
    "max_retries": (int, 0, 100),
    "retry_wait": (float, 0.0, 600.0),
}


@dataclass(frozen=True)
class LLMSettings:
    base_url: str  # ends before /chat/completions, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None
    api_key_env: str | None
    temperature: float
    max_tokens: int
    timeout: float
    concurrency: int
    requests_per_minute: float
    max_retries: int
    retry_wait: float


def llm_settings(config: Config) -> LLMSettings:
    where = config.where("llm")
    raw = config.synth.llm
    if not raw:
        raise UserError(
            "`llm` is not set: synth needs an OpenAI-compatible endpoint to write with",
            where=where,
            fix="add for example `llm: {base_url: http://127.0.0.1:8000/v1, model: qwen3-8b, "
            "api_key_env: OPENAI_API_KEY}` (docs/synth.md)",
        )
    unknown = [key for key in raw if key not in SYNTH_LLM_KEYS]
    if unknown:
        key = unknown[0]
        match = closest_key(key, SYNTH_LLM_KEYS)
        raise UserError(
            f"`llm` has an unknown key `{key}`",
            where=where,
            fix=(f"did you mean `{match}`? " if match else "")
            + f"`llm` takes {', '.join(SYNTH_LLM_KEYS)}",
        )
    for key in ("base_url", "model"):
        if not str(raw.get(key) or "").strip():
            raise UserError(
                f"`llm` has no `{key}`",
                where=where,
                fix="give `llm.base_url` (e.g. http://127.0.0.1:8000/v1) and `llm.model` (the "
                "name the endpoint serves)",
            )
    base_url = raw["base_url"].strip().rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if base_url.endswith(suffix):
            base_url = base_url[: -len(suffix)]
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(
            f"`llm.base_url: {raw['base_url']}` is not an http(s) URL",
            where=where,
            fix="give the endpoint's URL with its scheme, e.g. http://127.0.0.1:8000/v1 "
            "(lmforge api, vLLM) or http://127.0.0.1:11434/v1 (Ollama)",
        )
    values = dict(LLM_DEFAULTS)
    for key, (kind, low, high) in _TYPES.items():
        if key not in raw:
            continue
        try:
            number = float(raw[key])
            value = kind(number)
            if kind is int and number != value:
                raise ValueError
        except (TypeError, ValueError):
            raise UserError(
                f"`llm.{key}: {raw[key]}` is not a {'whole number' if kind is int else 'number'}",
                where=where,
                fix=f"give `llm.{key}` a number (the default is {LLM_DEFAULTS[key]})",
            ) from None
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise UserError(
                f"`llm.{key}: {raw[key]}` is out of range: it must be {allowed}",
                where=where,
                fix=f"set `llm.{key}` to a value {allowed} (the default is {LLM_DEFAULTS[key]})",
            )
        values[key] = value
    env = (raw.get("api_key_env") or "").strip() or None
    api_key = None
    if env is not None:
        api_key = os.environ.get(env)
        if not api_key:
            raise UserError(
                f"`llm.api_key_env: {env}` names an environment variable that is not set",
                where=where,
                fix=f"`export {env}=sk-...` before running, or remove `api_key_env` for an "
                "endpoint without a key",
            )
    return LLMSettings(
        base_url=base_url,
        model=raw["model"].strip(),
        api_key=api_key,
        api_key_env=env,
        **values,
    )


def output_folder(config: Config) -> str:
    if not config.train.output_dir:
        raise UserError(
            "`output_dir` is not set: synth writes its store and datasets there",
            where=config.source,
            fix="add `output_dir: data/synth` (a folder; a rerun continues what is in it)",
        )
    return config.train.output_dir


def check_chunking(config: Config) -> None:
    synth = config.synth
    if synth.chunk_min_chars > synth.chunk_max_chars:
        raise UserError(
            f"`chunk_min_chars: {synth.chunk_min_chars}` is larger than "
            f"`chunk_max_chars: {synth.chunk_max_chars}`",
            where=config.where("chunk_min_chars"),
            fix="make chunk_min_chars at most chunk_max_chars",
        )
    if synth.chunk_overlap >= synth.chunk_max_chars:
        raise UserError(
            f"`chunk_overlap: {synth.chunk_overlap}` is not smaller than "
            f"`chunk_max_chars: {synth.chunk_max_chars}`",
            where=config.where("chunk_overlap"),
            fix="use an overlap of a fraction of a chunk (for example 100)",
        )


def redacted(llm: LLMSettings) -> dict:
    """The settings for the report, without the key."""
    return {key: getattr(llm, key) for key in LLMSettings.__dataclass_fields__ if key != "api_key"}
