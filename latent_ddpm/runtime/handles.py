"""What a caller holds for a request submitted to a ``SamplingEngine``: a future and a stream of events.

The result is a ``concurrent.futures.Future`` (``handle.result()``, ``handle.future``, or ``await handle`` in
asyncio code). Events arrive in order as the engine works, and can be read from any thread
(``for event in handle.events()``) or from asyncio (``async for event in handle``); every reader sees every
event from the start, and the stream ends with exactly one of ``Finished``, ``Failed`` or ``Cancelled``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from latent_ddpm.runtime.results import GenerationResult, Preview


@dataclass(frozen=True)
class Progress:
    """Denoising steps done so far, over all of the request's images (a request split into several U-Net
    calls counts each part's steps): ``done == total`` when the last step is taken."""

    done: int
    total: int


@dataclass(frozen=True)
class Finished:
    result: GenerationResult


@dataclass(frozen=True)
class Failed:
    """The request failed alone (bad numbers, a model error); the engine goes on serving the others."""

    error: BaseException


@dataclass(frozen=True)
class Cancelled:
    """The request was cancelled (``handle.cancel()``, or the engine closed with ``cancel=True``)."""


Event = Progress | Preview | Finished | Failed | Cancelled
_END = (Finished, Failed, Cancelled)


class RequestHandle:
    """One submitted request. ``cancel()`` takes its rows out of the batch at the next step boundary."""

    def __init__(self, request_id: int) -> None:
        self.id = request_id
        self.future: Future[GenerationResult] = Future()
        self._events: list[Event] = []
        self._cond = threading.Condition()
        self._wakers: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        state = "done" if self.future.done() else "pending"
        return f"<RequestHandle {self.id} {state}, {len(self._events)} events>"

    def result(self, timeout: float | None = None) -> GenerationResult:
        """The result; raises the request's error, ``concurrent.futures.CancelledError`` or ``TimeoutError``."""
        return self.future.result(timeout)

    def cancel(self) -> bool:
        """Cancel unless already finished; True if it was cancelled (now or before)."""
        return self.future.cancel() or self.future.cancelled()

    def done(self) -> bool:
        return self.future.done()

    def __await__(self) -> Generator[Any, None, GenerationResult]:
        return asyncio.wrap_future(self.future).__await__()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Every event from the first, blocking for the next; ends after the final one. ``timeout`` bounds
        each wait (``TimeoutError``)."""
        i = 0
        while True:
            with self._cond:
                while len(self._events) <= i:
                    if not self._cond.wait(timeout):
                        raise TimeoutError(f"no event from request {self.id} within {timeout} s")
                batch = self._events[i:]
            for event in batch:
                yield event
                if isinstance(event, _END):
                    return
            i += len(batch)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._async_events()

    async def _async_events(self) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the reader's loop is closed: nobody to wake
                pass

        with self._cond:
            self._wakers.append(wake)
        try:
            i = 0
            while True:
                ready.clear()
                with self._cond:
                    batch = self._events[i:]
                if not batch:
                    await ready.wait()
                    continue
                for event in batch:
                    yield event
                    if isinstance(event, _END):
                        return
                i += len(batch)
        finally:
            with self._cond:
                self._wakers.remove(wake)

    def _post(self, event: Event) -> None:
        """Called by the engine's worker thread."""
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()
            wakers = list(self._wakers)
        for wake in wakers:
            wake()
