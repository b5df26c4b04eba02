"""Typed configuration: schema, loading and resolution."""

from lmforge.config.load import load_config
from lmforge.config.schema import Config

__all__ = ["Config", "load_config"]
