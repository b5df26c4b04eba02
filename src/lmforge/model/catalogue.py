"""The model catalogue: short names for known models, read from catalogue.yaml (data, not code)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import UserError
from lmforge.suggest import closest, did_you_mean

_ENTRY_KEYS = {"name", "description", "params", "template", "source", "generation_config"}
_SOURCE_KEYS = {"package", "module", "extra", "hf_hub", "ms_hub", "revision"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_PARAMS_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMB])$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a catalogue model comes from: a PyPI package embedding a GGUF, or a hub repository."""

    package: str | None = None  # pip distribution name
    module: str | None = None  # its import name; module.assemble() -> path of the GGUF file
    extra: str | None = None  # the lmforge extra that installs the package
    hf_hub: str | None = None
    ms_hub: str | None = None
    revision: str = "main"

    @property
    def kind(self) -> str:
        """ "package" or "hub"."""
        return "package" if self.package else "hub"

    def describe(self) -> str:
        if self.package:
            return f"pypi:{self.package}"
        return f"hf:{self.hf_hub}" if self.hf_hub else f"ms:{self.ms_hub}"


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    description: str
    params: str  # as written, e.g. "268M"
    template: str | None
    source: ModelSource
    # Written into generation_config.json when the model is converted (package sources only).
    generation_config: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def num_params(self) -> int:
        number, unit = _PARAMS_RE.match(self.params).groups()  # validated at load
        return round(float(number) * {"K": 1e3, "M": 1e6, "B": 1e9}[unit])


def default_catalogue_path() -> Path:
    return Path(str(resources.files("lmforge.model").joinpath("catalogue.yaml")))


@functools.cache
def _default_catalogue() -> dict[str, CatalogueEntry]:
    return load_catalogue(default_catalogue_path())


def load_catalogue(path: Path) -> dict[str, CatalogueEntry]:
    """Read and check a catalogue file; entries keyed by name, in file order."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read the model catalogue: {exc}", where=str(path)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise UserError("the catalogue must have a top-level `models:` list", where=str(path))
    entries: dict[str, CatalogueEntry] = {}
    for index, item in enumerate(raw["models"]):
        entry = _parse_entry(item, where=f"{path}: models[{index}]")
        if entry.name in entries:
            raise UserError(
                f"duplicate model name `{entry.name}`", where=f"{path}: models[{index}]"
            )
        entries[entry.name] = entry
    return entries


def _parse_entry(item: Any, *, where: str) -> CatalogueEntry:
    if not isinstance(item, dict):
        raise UserError("each catalogue entry must be a mapping", where=where)
    _check_keys(item, _ENTRY_KEYS, where)
    for key in ("name", "description", "params", "source"):
        if key not in item:
            raise UserError(f"missing `{key}`", where=where)
    name = str(item["name"])
    where = f"{where} ({name})"
    if not _NAME_RE.match(name):
        raise UserError(
            f"model name `{name}` must be lower case letters, digits, '.', '_' or '-'", where=where
        )
    params = str(item["params"])
    if not _PARAMS_RE.match(params):
        raise UserError(f"`params: {params}` must look like 268M or 1.5B", where=where)
    generation_config = item.get("generation_config") or {}
    if not isinstance(generation_config, dict):
        raise UserError("`generation_config` must be a mapping", where=where)
    return CatalogueEntry(
        name=name,
        description=str(item["description"]),
        params=params,
        template=item.get("template"),
        source=_parse_source(item["source"], where=where),
        generation_config=generation_config,
    )


def _parse_source(raw: Any, *, where: str) -> ModelSource:
    if not isinstance(raw, dict):
        raise UserError("`source` must be a mapping", where=where)
    _check_keys(raw, _SOURCE_KEYS, f"{where}: source")
    has_package = bool(raw.get("package"))
    has_hub = bool(raw.get("hf_hub") or raw.get("ms_hub"))
    if has_package == has_hub:
        raise UserError(
            "`source` needs exactly one kind: `package`, or `hf_hub` and/or `ms_hub`", where=where
        )
    for key in ("hf_hub", "ms_hub"):
        if raw.get(key) and not HUB_ID_RE.match(str(raw[key])):
            raise UserError(f"`{key}: {raw[key]}` is not a hub id like org/name", where=where)
    source = ModelSource(**{key: str(value) for key, value in raw.items() if value is not None})
    if source.package and not source.module:
        source = ModelSource(**{**source.__dict__, "module": source.package.replace("-", "_")})
    return source


def _check_keys(mapping: dict, allowed: set[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed).strip()
            fix = hint or f"allowed: {', '.join(sorted(allowed))}"
            raise UserError(f"unknown key `{key}`", where=where, fix=fix)


def list_entries() -> list[CatalogueEntry]:
    """All catalogue entries, in file order."""
    return list(_default_catalogue().values())


def get_entry(name: str) -> CatalogueEntry | None:
    """The entry called `name` (case-insensitive), or None."""
    return _default_catalogue().get(name.lower())


def find_by_hub_id(repo_id: str) -> CatalogueEntry | None:
    """The entry whose hub id is `repo_id`, so a hub id still gets the catalogue's template."""
    wanted = repo_id.lower()  # hub ids are case-insensitive
    for entry in _default_catalogue().values():
        if wanted in {(entry.source.hf_hub or "").lower(), (entry.source.ms_hub or "").lower()}:
            return entry
    return None


def suggest_name(name: str) -> str | None:
    """The closest catalogue name to a mistyped one, if any is close."""
    return closest(name.lower(), _default_catalogue())


def looks_like_hub_id(text: str) -> bool:
    """`org/name` as the Hugging Face hub and ModelScope spell repository ids."""
    return bool(HUB_ID_RE.match(text))


def catalogue_names() -> list[str]:
    return list(_default_catalogue())
