"""Command functions called by the CLI and the web UI; they return text or paths, never print."""
