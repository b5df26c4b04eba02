"""HTTP checks done before a request reaches a handler, so a web page cannot drive the server.

A server on 127.0.0.1 is reachable from every browser tab on the machine. Browsers let any page
send "simple" cross-origin requests (a POST with `Content-Type: text/plain` needs no CORS
preflight) and, through DNS rebinding, even same-origin ones to a hostname that resolves to
127.0.0.1. So, in this order:

1. Host (only when listening on loopback): localhost, 127.0.0.1 or [::1] with the server's port;
   anything else is a 403 (a rebinding page sends its own hostname).
2. Origin: a request carrying an Origin header (browsers add it to cross-origin requests and to
   every POST) is a 403 unless the origin is allowed (`--cors` / `api_cors`). Clients that are not
   browsers send no Origin and are not affected.
3. Content-Type of a POST: JSON (`application/json` or `*+json`) or none; anything else is a 415.
4. Body size: over `max_body_bytes` is a 413, from Content-Length before parsing, else as soon as
   the streamed body passes the limit. The body is read here and replayed to the app. Before a
   413 the rest of the body is read and dropped (up to DRAIN_BYTES, never stored): a server that
   closes the connection on a client still uploading makes the client see a reset, not the 413.
   A client that sent `Expect: 100-continue` gets the 413 without uploading at all.

Every refusal is OpenAI's error JSON. This is plain ASGI middleware (not BaseHTTPMiddleware), so
the app still sees the client's disconnect through `receive`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

from lmforge.infer.limits import ServerLimits
from lmforge.infer.openai_protocol import APIError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

LOCAL_NAMES = ("localhost", "127.0.0.1", "[::1]")
DRAIN_BYTES = 64 * 2**20  # larger uploads are cut off without reading them
BODY_METHODS = ("POST", "PUT", "PATCH")


class RequestGuard:
    def __init__(self, app, limits: ServerLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        problem = (
            self._check_host(scope, headers)
            or self._check_origin(headers)
            or self._check_content_type(scope, headers)
        )
        if problem is not None:
            await _reply(send, problem)
            return
        if scope["method"] in BODY_METHODS:
            declared = _content_length(headers)
            if declared is not None and declared > self.limits.max_body_bytes:
                if declared <= DRAIN_BYTES and "100-continue" not in headers.get("expect", ""):
                    await _drain(receive)
                await _reply(send, _too_large(self.limits.max_body_bytes))
                return
            body, problem = await _read_body(receive, self.limits.max_body_bytes)
            if problem is not None:
                await _reply(send, problem)  # _read_body has drained the rest
                return
            if body is None:  # the client went away while sending
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _check_host(self, scope: Scope, headers: dict[str, str]) -> APIError | None:
        server = scope.get("server") or (None, None)
        bound = self.limits.bind_host if self.limits.bind_host is not None else server[0]
        host = headers.get("host")
        if host is None or not _is_loopback(bound):
            return None
        port = server[1]
        allowed = {f"{name}:{port}" for name in LOCAL_NAMES}
        if port == 80:
            allowed.update(LOCAL_NAMES)
        if host.lower() in allowed:
            return None
        return APIError(
            403,
            f"the Host header `{_short(host)}` does not name this server; a server on loopback "
            f"answers only localhost, 127.0.0.1 or [::1] with port {port} (another name may be "
            "a web page reaching it through DNS rebinding)",
            code="host_not_allowed",
        )

    def _check_origin(self, headers: dict[str, str]) -> APIError | None:
        origin = headers.get("origin")
        if origin is None:
            return None
        allowed = self.limits.cors_origins
        if "*" in allowed or origin.strip().rstrip("/").lower() in allowed:
            return None
        return APIError(
            403,
            f"requests from web pages are refused: the origin `{_short(origin)}` is not allowed; "
            "start the server with --cors ORIGIN (or api_cors) to let a page at that origin "
            "call it",
            code="origin_not_allowed",
        )

    def _check_content_type(self, scope: Scope, headers: dict[str, str]) -> APIError | None:
        kind = headers.get("content-type")
        if scope["method"] not in BODY_METHODS or kind is None:
            return None
        media = kind.split(";", 1)[0].strip().lower()
        if media == "application/json" or media.endswith("+json"):
            return None
        return APIError(
            415,
            f"the request body must be JSON sent as `Content-Type: application/json`, not "
            f"`{_short(kind)}`",
            code="unsupported_media_type",
        )


def _headers(scope: Scope) -> dict[str, str]:
    """Header name -> value (latin-1, the last one of a repeated name)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()}


def _content_length(headers: dict[str, str]) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):  # h11 has already refused a malformed one
        return None


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is larger than this server's limit of {limit / 2**20:g} MiB "
        "(api_max_body_mb)",
        code="request_too_large",
    )


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, APIError | None]:
    """(body, None); (None, 413) once it passes `limit` (the rest drained); (None, None) if the
    client left."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, None
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            if more:
                await _drain(receive)
            return None, _too_large(limit)
        parts.append(chunk)
        if not more:
            return b"".join(parts), None


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of the body, up to DRAIN_BYTES."""
    size = 0
    while size <= DRAIN_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        size += len(message.get("body", b""))


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the real `receive` (which reports the client's disconnect)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(send: Send, error: APIError) -> None:
    body = json.dumps(error.body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.status == 413:
        headers.append((b"connection", b"close"))  # the rest of the body is not read
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
