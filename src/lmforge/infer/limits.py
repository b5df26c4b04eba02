"""What one client may ask of `lmforge api`: the settings, and a request's cost in tokens.

A request's cost is bounded before it is queued. For each prompt, each of its `n` answers
processes the prompt and up to `max_tokens` new tokens with its own KV cache, so

    cost = sum over prompts of n * (prompt tokens + max_tokens)

and a request costing more than `max_request_tokens` is a 400 that names the budget. (One
/v1/completions call with 64 prompts and n=16 used to queue every sequence at once.)
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from lmforge.errors import UserError
from lmforge.infer.openai_protocol import APIError

DEFAULT_REQUEST_TOKENS = 65536  # or the model's context, when that is longer
DEFAULT_BODY_MB = 4.0
MAX_DEFAULT_CONNECTIONS = 512  # or half the open-file limit, when that is lower
KEEP_ALIVE_S = 5.0  # an idle keep-alive connection is closed after this
REQUEST_READ_S = 30.0  # a request's head and body must arrive within this
HEADER_BYTES = 16 * 1024  # h11's limit on a request head (and on any one unparsed event)


@dataclass(frozen=True)
class ServerLimits:
    """None means: derived (see request_budget and connection_limit)."""

    max_request_tokens: int | None = None
    max_body_bytes: int = int(DEFAULT_BODY_MB * 2**20)
    max_connections: int | None = None
    cors_origins: tuple[str, ...] = ()  # "*" allows every origin
    bind_host: str | None = None  # where the server listens; None: read from each request
    keep_alive_s: float = KEEP_ALIVE_S
    request_read_s: float = REQUEST_READ_S

    def request_budget(self, context: int) -> int:
        if self.max_request_tokens is not None:
            return self.max_request_tokens
        return max(DEFAULT_REQUEST_TOKENS, context)

    def connection_limit(self) -> int:
        if self.max_connections is not None:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return MAX_DEFAULT_CONNECTIONS
        return max(16, min(MAX_DEFAULT_CONNECTIONS, soft // 2))


def limits_from_config(
    config,
    host: str | None = None,
    *,
    cors: str | None = None,
    max_request_tokens: int | None = None,
) -> ServerLimits:
    """The `api_*` keys of the config, with command-line flags (when given) on top."""
    infer = config.infer
    tokens = max_request_tokens if max_request_tokens is not None else infer.api_max_request_tokens
    if tokens is not None and tokens < 2:
        raise UserError(
            f"api_max_request_tokens is {tokens}", fix="give at least 2 (one prompt token, one new)"
        )
    if infer.api_max_body_mb <= 0:
        raise UserError(f"api_max_body_mb is {infer.api_max_body_mb}", fix="give e.g. 4")
    if infer.api_max_connections is not None and infer.api_max_connections < 1:
        raise UserError(f"api_max_connections is {infer.api_max_connections}", fix="give e.g. 256")
    return ServerLimits(
        max_request_tokens=tokens,
        max_body_bytes=int(infer.api_max_body_mb * 2**20),
        max_connections=infer.api_max_connections,
        cors_origins=parse_origins(cors if cors is not None else infer.api_cors),
        bind_host=host,
    )


def parse_origins(text: str | None) -> tuple[str, ...]:
    """Origins as written ("https://a.example, http://localhost:3000") -> normalized ("*" kept)."""
    origins = []
    for raw in (text or "").split(","):
        origin = raw.strip().rstrip("/").lower()
        if not origin:
            continue
        if origin != "*" and "://" not in origin:
            raise UserError(
                f"the CORS origin `{raw.strip()}` has no scheme",
                fix="write origins as scheme://host[:port], e.g. http://localhost:3000, or *",
            )
        origins.append(origin)
    return tuple(origins)


def check_request_cost(
    prompt_lengths: list[int], n: int, max_tokens: list[int], budget: int
) -> None:
    """400 when the request may process more tokens than `budget` (see the module doc)."""
    cost = sum(n * (p + m) for p, m in zip(prompt_lengths, max_tokens))
    if cost <= budget:
        return
    shape = f"{len(prompt_lengths)} prompt{'s' if len(prompt_lengths) != 1 else ''} x n={n}"
    raise APIError(
        400,
        f"this request may process {cost} tokens ({shape} x (prompt + max_tokens)), more than "
        f"this server's budget of {budget} tokens per request (api_max_request_tokens); lower "
        "n, max_tokens or the number of prompts, or send several requests",
        param="n" if n > 1 else "max_tokens",
        code="request_too_large",
    )


def check_request_count(prompts: int, n: int, budget: int) -> None:
    """The same budget, before tokenizing: every answer costs at least 2 tokens."""
    if prompts * n * 2 > budget:
        check_request_cost([1] * prompts, n, [1] * prompts, budget)
