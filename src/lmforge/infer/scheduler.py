"""A fair scheduler: one worker thread generates for every active request, token by token.

Why one thread: the model (and, with several adapters, its active adapter) is shared state. Only
the worker touches it, so adapter switches can never interleave with another request's forward
pass, and no lock is held across a generation. Why round-robin: each round gives every active
sequence one step (one new token, or one chunk of its prompt), so a short request admitted
behind a long one finishes after a few of its own steps instead of waiting for the long one.
Up to `max_active` sequences run together; later ones wait (never refused here: the API bounds
a request's size before it is queued). Free slots go to waiting *requests* in turn, one sequence
each, so a request with many sequences (n=16, or many prompts) cannot take every slot from the
requests queued behind it. A cancelled request's waiting sequences are dropped without being
admitted. Within a round, sequences are grouped by adapter so each adapter is switched to at
most once.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

from lmforge.infer.sampling import SamplingParams, TokenSampler
from lmforge.infer.text_stream import IncrementalDecoder, StopStringFilter

logger = logging.getLogger(__name__)

_DONE = object()


@dataclass
class Chunk:
    """New text of one choice; `finish_reason` is set on its last chunk: "stop", "length", or
    "cancelled" (after cancel())."""

    index: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0


class GenerationStream:
    """What a caller holds for one request: its chunks (sync or async iteration) and cancel()."""

    def __init__(self, n: int, prompt_tokens: int, loop: asyncio.AbstractEventLoop | None = None):
        self.n = n
        self.prompt_tokens = prompt_tokens
        self.cancelled = threading.Event()
        self._loop = loop
        self._sync: queue.Queue = queue.Queue()
        self._async: asyncio.Queue | None = asyncio.Queue() if loop else None
        self._open = n

    def put(self, item: Chunk | BaseException) -> None:
        """Called by the worker thread."""
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async.put_nowait, item)
            except RuntimeError:  # the caller's event loop is gone: nobody is listening
                self.cancelled.set()
        else:
            self._sync.put(item)

    def cancel(self) -> None:
        self.cancelled.set()

    def _accept(self, item: Any) -> Chunk:
        if isinstance(item, BaseException):
            raise item
        if item.finish_reason is not None:
            self._open -= 1
        return item

    def __iter__(self) -> Iterator[Chunk]:
        try:
            while self._open > 0:
                yield self._accept(self._sync.get())
        finally:
            self.cancel()  # a consumer that stops early frees the worker's slot

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        try:
            while self._open > 0:
                yield self._accept(await self._async.get())
        finally:
            self.cancel()


class Runner(Protocol):
    """The model side of a step: forward `seq`'s uncached ids, return last logits when done."""

    max_length: int
    device: Any

    def activate(self, adapter: str | None) -> None: ...

    def step(self, seq: Sequence) -> Any: ...


class Sequence:
    """One answer being generated (a request with n=3 has three)."""

    _ids = itertools.count()

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        adapter: str | None,
        index: int,
        stream: GenerationStream,
        tokenizer,
        device: Any = "cpu",
    ):
        self.id = next(self._ids)
        self.ids = list(prompt_ids)
        self.prompt_len = len(prompt_ids)
        self.params = params
        self.adapter = adapter
        self.index = index
        self.stream = stream
        self.sampler = TokenSampler(params, self.prompt_len, device)
        self.decoder = IncrementalDecoder(tokenizer, params.skip_special_tokens)
        self.stops = StopStringFilter(params.stop)
        self.stop_ids = set(params.stop_token_ids)
        # Runner state: the KV cache and how many of `ids` it holds.
        self.cache: Any = None
        self.cached = 0

    @property
    def generated(self) -> int:
        return len(self.ids) - self.prompt_len


class Scheduler:
    def __init__(self, runner: Runner, tokenizer, *, max_active: int = 8):
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_active = max(1, max_active)
        # Waiting sequences per request (stream), in arrival order of the requests.
        self._waiting: collections.OrderedDict[int, collections.deque[Sequence]] = (
            collections.OrderedDict()
        )
        self._active: list[Sequence] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="lmforge-generate", daemon=True)
        self._thread.start()

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        adapter: str | None = None,
        n: int = 1,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> GenerationStream:
        stream = GenerationStream(n, len(prompt_ids), loop)
        seqs = []
        for index in range(n):
            # With a seed, choice i uses seed + i: reproducible, yet the n choices differ.
            seed = None if params.seed is None else params.seed + index
            seqs.append(
                Sequence(
                    prompt_ids,
                    _with_seed(params, seed),
                    adapter=adapter,
                    index=index,
                    stream=stream,
                    tokenizer=self.tokenizer,
                    device=self.runner.device,
                )
            )
        with self._wake:
            if self._closed:
                raise RuntimeError("the generation worker has stopped")
            self._waiting[id(stream)] = collections.deque(seqs)
            self._wake.notify()
        return stream

    def stats(self) -> dict[str, int]:
        with self._wake:
            return {
                "active": len(self._active),
                "waiting": sum(len(q) for q in self._waiting.values()),
                "max_active": self.max_active,
            }

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def _admit(self) -> bool:
        """Move waiting sequences into free slots; block while there is nothing to do."""
        with self._wake:
            while not self._closed and not self._active and not self._waiting:
                self._wake.wait()
            if self._closed:
                waiting = [seq for q in self._waiting.values() for seq in q]
                for seq in self._active + waiting:
                    seq.stream.put(RuntimeError("the server is shutting down"))
                return False
            while self._waiting and len(self._active) < self.max_active:
                seq = self._next_waiting()
                if seq.stream.cancelled.is_set():
                    self._finish(seq, "", "cancelled")  # never admitted: no slot, no cache
                else:
                    self._active.append(seq)
            return True

    def _next_waiting(self) -> Sequence:
        """One sequence of the longest-waiting request; that request then goes to the back."""
        key, queue_ = next(iter(self._waiting.items()))
        seq = queue_.popleft()
        if queue_:
            self._waiting.move_to_end(key)
        else:
            del self._waiting[key]
        return seq

    def _loop(self) -> None:
        while self._admit():
            finished = []
            # Stable sort: arrival order within each adapter group.
            for seq in sorted(self._active, key=lambda s: (s.adapter is not None, s.adapter or "")):
                if seq.stream.cancelled.is_set():
                    # Ends a sync consumer's iteration; nobody may be listening any more.
                    self._finish(seq, "", "cancelled")
                    finished.append(seq)
                    continue
                try:
                    self.runner.activate(seq.adapter)
                    if self._step(seq):
                        finished.append(seq)
                except Exception as exc:  # one bad request must not stop the others
                    logger.exception("generation failed")
                    seq.stream.put(exc)
                    seq.stream.cancel()
                    finished.append(seq)
            with self._wake:
                self._active = [s for s in self._active if s not in finished]
            for seq in finished:
                seq.cache = None  # free the KV cache now, not when the stream is collected

    def _step(self, seq: Sequence) -> bool:
        """Advance `seq` by one forward pass; True when it has finished."""
        logits = self.runner.step(seq)
        if logits is None:
            return False  # a chunk of a long prompt went in; no token yet
        token = seq.sampler(seq.ids, logits)
        seq.ids.append(token)
        count = seq.generated
        if token in seq.stop_ids:
            return self._finish(seq, seq.stops.flush(), "stop")
        text = seq.stops.feed(seq.decoder.add(token))
        if seq.stops.stopped:
            return self._finish(seq, text, "stop")
        if count >= seq.params.max_tokens or len(seq.ids) >= self.runner.max_length:
            return self._finish(seq, text + seq.stops.flush(), "length")
        if text:
            seq.stream.put(Chunk(seq.index, text, None, count))
        return False

    def _finish(self, seq: Sequence, text: str, reason: str) -> bool:
        seq.stream.put(Chunk(seq.index, text, reason, seq.generated))
        return True


def _with_seed(params: SamplingParams, seed: int | None) -> SamplingParams:
    return params if seed == params.seed else replace(params, seed=seed)
