"""Data: dataset registry, readers, formats, chat templates and encoding."""
