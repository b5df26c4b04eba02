"""Shared start of every command that uses a model: where it is, its tokenizer, its template."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from lmforge.config.schema import Config
from lmforge.data.preflight import check_template
from lmforge.data.template import Template
from lmforge.data.template_auto import load_template
from lmforge.errors import UserError
from lmforge.model.load import load_tokenizer, split_paths
from lmforge.model.source import ResolvedModel, resolve_model

logger = logging.getLogger(__name__)


@dataclass
class ModelSetup:
    resolved: ResolvedModel
    tokenizer: object
    template: Template


def choose_template_name(config: Config, resolved: ResolvedModel, tokenizer=None) -> str:
    """The config's template; else the one the adapter was trained with; else `auto` when the
    tokenizer has a chat template; else the catalogue's."""
    if config.model.template:
        return config.model.template
    for adapter in split_paths(config.model.adapter_name_or_path):
        run_config = Path(adapter) / "run_config.yaml"
        if run_config.is_file():
            name = (yaml.safe_load(run_config.read_text()) or {}).get("template")
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


def prepare_model_setup(config: Config) -> ModelSetup:
    model = config.model
    resolved = resolve_model(model.model_name_or_path, revision=model.model_revision)
    tokenizer = load_tokenizer(resolved.path, trust_remote_code=model.trust_remote_code)
    name = choose_template_name(config, resolved, tokenizer)
    template = load_template(name, tokenizer, config.data)
    check_template(template, tokenizer)
    config.model.template = template.name
    return ModelSetup(resolved, tokenizer, template)
