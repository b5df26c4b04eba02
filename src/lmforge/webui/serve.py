"""Where the board listens, and who may use it.

- 127.0.0.1:7860 by default (GRADIO_SERVER_PORT is read for the port, as webchat reads it).
- Any other address must be given with --host, and then a password is required: --auth
  user:pass, or LMFORGE_WEBUI_AUTH=user:pass in the environment (kept out of `ps`). The board
  starts jobs that read and write files as the user running it: on a network without a
  password, anyone who reaches the port could.
- --share (a public gradio.live link) is never the default and needs a password too.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from lmforge.errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
AUTH_ENV = "LMFORGE_WEBUI_AUTH"


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    auth: tuple[str, str] | None
    share: bool


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UserError(
            f"{where} must be user:password (both non-empty)",
            fix=f"for example --auth admin:a-long-password, or {AUTH_ENV}=admin:a-long-password",
        )
    return user, password


def listen_settings(
    host: str | None = None,
    port: int | None = None,
    auth: str | None = None,
    share: bool = False,
    environ: dict | None = None,
) -> Listen:
    """The address, password and share setting, or a UserError saying what is missing."""
    environ = os.environ if environ is None else environ
    host = host or DEFAULT_HOST
    raw_port = port if port is not None else environ.get("GRADIO_SERVER_PORT") or DEFAULT_PORT
    try:
        port = int(raw_port)
    except ValueError:
        raise UserError(f"GRADIO_SERVER_PORT `{raw_port}` is not a port number") from None
    credentials = None
    if auth:
        credentials = parse_auth(auth, "--auth")
    elif environ.get(AUTH_ENV):
        credentials = parse_auth(environ[AUTH_ENV], AUTH_ENV)
    if not is_loopback(host) and credentials is None:
        raise UserError(
            f"the board would listen on {host}, reachable from other machines, without a "
            "password: anyone reaching it could run jobs and read files as you",
            fix=f"add --auth user:password (or set {AUTH_ENV}=user:password), or leave --host "
            "out to listen on 127.0.0.1 only",
        )
    if share and credentials is None:
        raise UserError(
            "--share publishes the board on a public gradio.live address; it needs a password",
            fix=f"add --auth user:password (or set {AUTH_ENV}=user:password)",
        )
    return Listen(host, port, credentials, share)
