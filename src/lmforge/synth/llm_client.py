"""One OpenAI-compatible chat-completions client for synth: concurrency, requests per minute,
and retries with backoff on 429, 5xx, timeouts and dropped connections.

What a retry cannot fix stops the run at once with a UserError (a wrong key: 401/403; a wrong
URL or model name: 404; an endpoint that was never reached): every result so far is already in
the store, so the same command continues after the fix. A request the endpoint refuses for
its own content (400/413/422, e.g. a prompt longer than the model's context) fails that item
only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import httpx

from lmforge.errors import UserError
from lmforge.synth.settings import LLMSettings

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
MAX_WAIT = 60.0


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


class RequestFailed(Exception):
    """This request failed for good (after retries, or refused for its content)."""


@dataclass
class ClientStats:
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


class LLMClient:
    def __init__(self, settings: LLMSettings, stats: ClientStats | None = None):
        self.settings = settings
        self.stats = stats or ClientStats()
        self.successes = 0
        self.connect_failures = 0  # requests in a row that found no server (reset by a success)
        headers = {"Content-Type": "application/json"}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        limits = httpx.Limits(
            max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
        )
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(settings.timeout), limits=limits
        )
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._interval = 60.0 / settings.requests_per_minute if settings.requests_per_minute else 0
        self._next_start = 0.0
        self._pace = asyncio.Lock()
        self.url = f"{settings.base_url}/chat/completions"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def chat(self, messages: list[dict]) -> Reply:
        body = {
            "model": self.settings.model,
            "messages": messages,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
            "stream": False,
        }
        attempt = 0
        while True:
            async with self._slots:
                await self._paced()
                self.stats.requests += 1
                try:
                    response = await self._http.post(self.url, json=body)
                    problem, wait = self._judge(response)
                    if problem is None:
                        return self._reply(response)
                except httpx.TimeoutException:
                    problem, wait = f"no answer within {self.settings.timeout:g} s", None
                except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                    problem, wait = f"connection failed ({type(exc).__name__}: {exc})", None
                    if self.successes == 0 and isinstance(exc, httpx.ConnectError):
                        if attempt >= min(2, self.settings.max_retries):
                            raise self._unreachable(exc) from None
            if attempt >= self.settings.max_retries:
                if problem.startswith("connection failed"):
                    self.connect_failures += 1
                    if self.connect_failures >= 2 * self.settings.concurrency:
                        # the server went away: stop rather than fail every item left
                        raise self._unreachable(problem)
                raise RequestFailed(f"{problem}; gave up after {attempt + 1} tries")
            attempt += 1
            self.stats.retries += 1
            delay = wait if wait is not None else self._backoff(attempt)
            logger.debug("retry %d in %.2fs: %s", attempt, delay, problem)
            await asyncio.sleep(delay)

    async def _paced(self) -> None:
        if not self._interval:
            return
        async with self._pace:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)

    def _backoff(self, attempt: int) -> float:
        base = self.settings.retry_wait * 2 ** (attempt - 1)
        return min(MAX_WAIT, base * (0.5 + random.random()))

    def _judge(self, response: httpx.Response) -> tuple[str | None, float | None]:
        """(None, None) for a good response; (problem, wait or None) for a retryable one;
        raises for one no retry fixes."""
        status = response.status_code
        if status == 200:
            return None, None
        detail = _error_text(response)
        if status in RETRY_STATUS:
            return f"HTTP {status} {detail}".strip(), _retry_after(response)
        if status in (401, 403):
            raise UserError(
                f"the LLM endpoint {self.url} refused the key (HTTP {status} {detail})".strip(),
                fix=f"check the key in the environment variable {self.settings.api_key_env}"
                if self.settings.api_key_env
                else "the endpoint wants a key: set `llm.api_key_env` to the environment "
                "variable that holds it",
            )
        if status == 404:
            raise UserError(
                f"the LLM endpoint answered 404 to {self.url} with model "
                f"`{self.settings.model}` ({detail})",
                fix="check `llm.base_url` (it usually ends in /v1) and that `llm.model` is a "
                "model the endpoint serves (GET /v1/models lists them)",
            )
        raise RequestFailed(f"HTTP {status} {detail}".strip())

    def _reply(self, response: httpx.Response) -> Reply:
        try:
            data = response.json()
            choice = data["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content") or ""
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            if reasoning and "<think>" not in text:
                text = f"<think>{reasoning}</think>{text}"
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise RequestFailed(
                f"the endpoint's answer is not a chat completion: {response.text[:200]!r}"
            ) from None
        usage = data.get("usage") or {}
        self.successes += 1
        self.connect_failures = 0
        self.stats.tokens_in += int(usage.get("prompt_tokens") or 0)
        self.stats.tokens_out += int(usage.get("completion_tokens") or 0)
        return Reply(
            text,
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            choice.get("finish_reason"),
        )

    def _unreachable(self, exc: Exception | str) -> UserError:
        return UserError(
            f"cannot reach the LLM endpoint at {self.settings.base_url} ({exc})",
            fix="start the server (`lmforge api ...`, vLLM, Ollama) or correct `llm.base_url`; "
            "the same command then continues where it stopped",
        )


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else error or data.get("detail")
        return str(message)[:300] if message else ""
    except (ValueError, AttributeError):
        return response.text[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(MAX_WAIT, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None
