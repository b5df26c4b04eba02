"""uvicorn, set up so that slow, idle or too many connections cannot exhaust the server.

uvicorn alone never times out a connection that has not finished sending a request (only idle
keep-alive connections), and accepts connections until the process runs out of file handles:
21,000 half-open connections did exactly that, and logged a line each. Here:
- a connection over `connection_limit()` gets a 503 (with Retry-After) and is closed at once;
- a request's head and body must arrive within `request_read_s` of the connection opening (or
  of the previous response), else the connection is closed: no slowloris;
- idle keep-alive connections close after `keep_alive_s`; a request head is at most 16 KiB;
- repeated warnings (refused connections, invalid requests) are logged once per 10 s, with a
  count of those suppressed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from lmforge.infer.limits import HEADER_BYTES, ServerLimits

logger = logging.getLogger(__name__)

_BUSY = json.dumps(
    {
        "error": {
            "message": "the server has too many open connections; retry shortly",
            "type": "server_error",
            "param": None,
            "code": "too_many_connections",
        }
    }
).encode()
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(_BUSY)).encode()
    + b"\r\n\r\n"
    + _BUSY
)


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with a connection cap and a deadline for reading each request."""

    max_connections: int = 512
    request_read_s: float = 30.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = len(self.connections) >= self.max_connections
        if self._refused:
            transport.write(BUSY_RESPONSE)
            transport.close()
            logger.warning(
                "refused a connection: %d are open (api_max_connections)", len(self.connections)
            )
            return
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        self._request_read()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_deadline()  # for the next request on this connection
            self._request_read()  # a pipelined one may be in already

    def _request_read(self) -> None:
        if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
            self._cancel_deadline()  # the whole request is in (or the connection is closing)

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.request_read_s, self._read_timed_out)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _read_timed_out(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol_class(limits: ServerLimits) -> type[GuardedH11Protocol]:
    attrs = {"max_connections": limits.connection_limit(), "request_read_s": limits.request_read_s}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attrs)


def server_config(app, host: str, port: int, limits: ServerLimits, **uvicorn_options):
    """uvicorn.Config for `app` with the limits above."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(limits),
        ws="none",
        timeout_keep_alive=limits.keep_alive_s,
        h11_max_incomplete_event_size=HEADER_BYTES,
        **uvicorn_options,
    )


class RepeatFilter(logging.Filter):
    """Lets each message template through at most once per `every` seconds."""

    def __init__(self, every: float = 10.0):
        super().__init__()
        self.every = every
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.exc_info:
            return True
        key = str(record.msg)
        now = time.monotonic()
        if now - self._last.get(key, -self.every) < self.every:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} more like this in the last {self.every:g} s)"
        return True


def quiet_repeats() -> None:
    """Rate-limit repeated warnings of uvicorn and of this module (idempotent)."""
    for name in ("uvicorn.error", __name__):
        log = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in log.filters):
            log.addFilter(RepeatFilter())
