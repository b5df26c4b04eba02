"""Shared start of every command that uses a model: where it is, its tokenizer, its template."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from lmforge.config.run_files import run_settings
from lmforge.config.schema import Config
from lmforge.data.encoding.preflight import check_template
from lmforge.data.templates.auto import load_template
from lmforge.data.templates.base import ChatTemplate
from lmforge.errors import UserError
from lmforge.model.load import load_tokenizer, split_paths
from lmforge.model.new_tokens import NewTokens, add_to_tokenizer, requested_tokens
from lmforge.model.rope import RopeScaling, rope_scaling_for
from lmforge.model.source import ResolvedModel, resolve_model

logger = logging.getLogger(__name__)


@dataclass
class ModelSetup:
    resolved: ResolvedModel
    tokenizer: object
    template: ChatTemplate
    # Tokens the config added to the tokenizer (add_tokens, add_special_tokens, ...), and
    # their ids in it: the model's rows for them are fitted when it loads (new_tokens.py).
    new_tokens: NewTokens = field(default_factory=NewTokens)
    new_token_ids: tuple[int, ...] = ()
    # rope_scaling: how the model loads (None: as its config.json says), and the plan's line.
    rope: RopeScaling | None = None
    rope_note: str = ""

    @property
    def rope_factor(self) -> float:
        """The factor the weights are trained with, for run_plan.yaml (1: not scaled)."""
        return self.rope.factor if self.rope else 1.0


def choose_template_name(config: Config, resolved: ResolvedModel, tokenizer=None) -> str:
    """The config's template; else the one the adapter was trained with; else `auto` when the
    tokenizer has a chat template; else the catalogue's."""
    if config.model.template:
        return config.model.template
    for adapter in split_paths(config.model.adapter_name_or_path):
        name = (run_settings(adapter) or {}).get("template")
        if name:
            return name
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return "auto"
    if resolved.template:
        return resolved.template
    raise UserError(
        f"no chat template is known for {config.model.model_name_or_path}",
        where=config.source,
        fix="set `template` (for example template: gemma); see docs/templates.md",
    )


# The prompt format and vocabulary a trained model learned: inference uses the training run's
# values of these keys unless the inference config sets them itself. key -> config section.
TRAINED_FORMAT_KEYS = {
    "template": "model",
    "enable_thinking": "data",
    "preserve_thinking": "data",
    "tool_format": "data",
    "default_system": "data",
    "date_string": "data",
    # the vocabulary: the same tokens get the same ids as in training
    "add_tokens": "model",
    "add_special_tokens": "model",
    "new_special_tokens_config": "model",
    "resize_vocab": "model",
    # the positions: the RoPE scaling the weights learned (rope_factor 1: none)
    "rope_scaling": "model",
    "rope_factor": "model",
}


def training_run_settings(config: Config) -> tuple[Path, dict] | None:
    """(run folder, settings) of the run that produced the served weights: the last
    adapter_name_or_path's (or its run folder's, for a checkpoint), else the model folder's."""
    adapters = split_paths(config.model.adapter_name_or_path)
    name = adapters[-1] if adapters else config.model.model_name_or_path
    folder = Path(name) if name else None
    if folder is None or not folder.is_dir():
        return None  # a hub or catalogue name: not a training output
    folders = [folder]
    if folder.name.startswith("checkpoint-"):
        folders.append(folder.parent)  # output_dir/checkpoint-N -> output_dir
    for folder in folders:
        settings = run_settings(folder)
        if settings is not None:
            return folder, settings
    return None


def with_training_settings(config: Config) -> Config:
    """The config with the template, thinking and tool settings (and default_system) the served
    weights were trained with, for each such key the config does not set. A new Config: the
    one given stays as the user wrote it."""
    found = training_run_settings(config)
    if found is None:
        return config
    folder, trained = found
    if trained.get("rope_scaling") and "rope_factor" not in trained:
        trained = {**trained, "rope_factor": 1.0}  # runs before lmforge scaled RoPE: unscaled
    changes: dict[str, dict] = {}
    for key, section_name in TRAINED_FORMAT_KEYS.items():
        if key in config.given or key not in trained:
            continue
        if getattr(getattr(config, section_name), key) != trained[key]:
            changes.setdefault(section_name, {})[key] = trained[key]
    if not changes:
        return config
    taken = ", ".join(f"{k}={v!r}" for kv in changes.values() for k, v in kv.items())
    logger.info("as in training (%s): %s", folder, taken)
    sections = {name: replace(getattr(config, name), **kv) for name, kv in changes.items()}
    return replace(config, **sections)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def tokenizer_folder(model_folder: str | Path) -> Path:
    """Where a model folder's tokenizer is: training checkpoints (output_dir/checkpoint-N) hold
    none, it is saved once in the run folder above them."""
    folder = Path(model_folder)
    if folder.name.startswith("checkpoint-") and not _has_tokenizer(folder):
        if _has_tokenizer(folder.parent):
            return folder.parent
    return folder


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def prepare_model_setup(config: Config, *, training: bool = False) -> ModelSetup:
    """training: the model is to be trained (RoPE scaling follows cutoff_len)."""
    model = config.model
    resolved = resolve_model(model.model_name_or_path, revision=model.model_revision)
    tokenizer = load_tokenizer(
        tokenizer_folder(resolved.path), trust_remote_code=model.trust_remote_code
    )
    new_tokens = requested_tokens(model)
    new_ids = add_to_tokenizer(tokenizer, new_tokens) if new_tokens else []
    name = choose_template_name(config, resolved, tokenizer)
    template = load_template(name, tokenizer, config.data)
    check_template(template, tokenizer)
    rope, rope_note = rope_scaling_for(
        resolved.path,
        model.rope_scaling,
        factor=model.rope_factor,
        context_len=config.data.cutoff_len if training else None,
        trust_remote_code=model.trust_remote_code,
        where=config.where("rope_scaling"),
    )
    return ModelSetup(resolved, tokenizer, template, new_tokens, tuple(new_ids), rope, rope_note)
