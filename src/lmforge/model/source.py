"""What `model_name_or_path` means: a local folder, a GGUF file, a catalogue name or a hub id.

The rules, in order:
1. an existing folder is used as is (it must hold config.json);
2. an existing .gguf file is converted once into `models_dir()/gguf-<hash>/` and reused;
3. a catalogue name is pulled on first use (`lmforge models pull NAME` does it ahead of time);
4. something that looks like a path but does not exist is an error naming the path;
5. `org/name` is downloaded from the Hugging Face hub (ModelScope with USE_MODELSCOPE_HUB=1);
6. anything else is an error with a did-you-mean from the catalogue.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import UserError
from lmforge.model.catalogue import (
    CatalogueEntry,
    catalogue_names,
    find_by_hub_id,
    get_entry,
    looks_like_hub_id,
    suggest_name,
)
from lmforge.model.gguf_convert import conversion_lock, convert_gguf, is_converted
from lmforge.model.pull import (
    cached_snapshot,
    download_snapshot,
    hub_from_env,
    local_model_path,
    pull_model,
)
from lmforge.paths import models_dir

logger = logging.getLogger(__name__)

ORIGINS = ("local", "hf_hub", "ms_hub", "gguf", "catalogue")
_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


@dataclass(frozen=True)
class ResolvedModel:
    """A model as a local folder that `from_pretrained` can load, and where it came from."""

    path: Path
    origin: str  # one of ORIGINS
    catalogue_entry: CatalogueEntry | None = None
    template: str | None = None  # the catalogue's template, used when the config names none


def resolve_model(name_or_path: str, *, revision: str = "main", pull: bool = True) -> ResolvedModel:
    """Turn `model_name_or_path` into a local folder, downloading or converting if needed.

    With `pull=False` nothing is downloaded or converted: a model that is not local yet is a
    UserError saying to run `lmforge models pull NAME`.
    """
    text = str(name_or_path).strip()
    if not text:
        raise UserError(
            "`model_name_or_path` is empty",
            fix="give a model folder, a .gguf file, a hub id (org/name) or a catalogue name",
        )
    path = Path(text).expanduser()
    if path.is_dir():
        return _local_folder(path)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _gguf_file(path, pull=pull)
        raise UserError(
            f"model path {path} is a file; a model is a folder with config.json, or a .gguf file",
            fix="give the folder that contains the model's config.json and weights",
        )
    entry = get_entry(text)
    if entry is not None:
        return _catalogue_model(entry, revision=revision, pull=pull)
    if _looks_like_path(text):
        full = "" if str(path) == text else f" ({path.absolute()})"
        raise UserError(
            f"model path {text} does not exist{full}",
            fix="check the path (a relative path is relative to the YAML file or the working "
            "directory)",
        )
    if looks_like_hub_id(text):
        return _hub_model(text, revision=revision, pull=pull)
    raise _unknown_model(text)


def _local_folder(path: Path) -> ResolvedModel:
    if not (path / "config.json").is_file():
        raise _not_a_model_folder(path)
    # Pointing at a converted catalogue model by path still gets its template.
    entry = get_entry(path.name) if path.resolve().parent == models_dir().resolve() else None
    return ResolvedModel(
        path=path, origin="local", catalogue_entry=entry, template=entry.template if entry else None
    )


def _not_a_model_folder(path: Path) -> UserError:
    if (path / "adapter_config.json").is_file():
        return UserError(
            f"{path} is an adapter (it has adapter_config.json but no config.json)",
            fix=f"set `model_name_or_path` to the base model and `adapter_name_or_path: {path}`",
        )
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs:
        return UserError(
            f"model folder {path} has no config.json, only GGUF files",
            fix=f"give the .gguf file itself, e.g. {ggufs[0]}",
        )
    return UserError(
        f"model folder {path} has no config.json, so it is not a Hugging Face model folder",
        fix="give the folder that holds config.json and the weights (*.safetensors), a .gguf "
        "file, a hub id (org/name) or a catalogue name (`lmforge models list`)",
    )


def gguf_cache_dir(gguf_path: Path) -> Path:
    """Where a GGUF file is converted: keyed by its absolute path, size and mtime, so an edited
    or replaced file is converted again and an unchanged one never is."""
    resolved = gguf_path.expanduser().resolve()
    stat = resolved.stat()
    key = f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    return models_dir() / f"gguf-{hashlib.sha256(key).hexdigest()[:12]}"


def _gguf_file(path: Path, *, pull: bool) -> ResolvedModel:
    dest = gguf_cache_dir(path)
    if not is_converted(dest):
        if not pull:
            raise UserError(
                f"the GGUF file {path} has not been converted yet",
                fix=f"run `lmforge models pull {path}` (converts it once; later runs reuse it)",
            )
        with conversion_lock(dest):
            if not is_converted(dest):  # unless another process did it while we waited
                logger.info("Converting %s once into %s", path, dest)
                convert_gguf(path, dest)
    return ResolvedModel(path=dest, origin="gguf")


def _catalogue_model(entry: CatalogueEntry, *, revision: str, pull: bool) -> ResolvedModel:
    if pull:
        path = pull_model(entry.name, revision=None if revision == "main" else revision)
    else:
        path = local_model_path(entry.name)
        if path is None:
            raise UserError(
                f"catalogue model `{entry.name}` has not been pulled yet",
                fix=f"run `lmforge models pull {entry.name}`",
            )
    return ResolvedModel(
        path=path, origin="catalogue", catalogue_entry=entry, template=entry.template
    )


def _hub_model(repo_id: str, *, revision: str, pull: bool) -> ResolvedModel:
    hub = hub_from_env()
    if pull:
        path = download_snapshot(repo_id, revision=revision, hub=hub)
    else:
        path = cached_snapshot(repo_id, revision=revision, hub=hub)
        if path is None:
            raise UserError(
                f"model {repo_id} is not in the local hub cache",
                fix=f"run `lmforge models pull {repo_id}`",
            )
    entry = find_by_hub_id(repo_id)  # a known model gets the catalogue's template
    return ResolvedModel(
        path=path, origin=hub, catalogue_entry=entry, template=entry.template if entry else None
    )


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(_PATH_PREFIXES)
        or text.lower().endswith(".gguf")
        or text.count("/") > 1  # org/name has exactly one
        or "\\" in text
    )


def _unknown_model(text: str) -> UserError:
    suggestion = suggest_name(text)
    hint = f"did you mean `{suggestion}`? " if suggestion else ""
    return UserError(
        f"model `{text}` not found: it is not a local folder, a .gguf file, a catalogue name "
        "or a hub id (org/name)",
        fix=f"{hint}Catalogue models: {', '.join(catalogue_names())} (`lmforge models list`); "
        "for a hub model give its full id, e.g. Qwen/Qwen2.5-0.5B-Instruct",
    )
