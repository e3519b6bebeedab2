"""The thread that owns one model instance.

Everything that touches the model (load, warm-up, forward passes, unload) runs on this one
thread, so device contexts and thread-local state of the framework stay put, and the event
loop never blocks on a forward pass.

The thread is a daemon: a forward pass that hangs forever (a wedged driver, a deadlock in
native code) cannot be killed from Python, so the watchdog abandons such a worker and starts
a new one, and the abandoned thread must not keep the process alive at exit. Shutdown does
the same through :meth:`ModelWorker.abandon` when the thread is still busy once its time is up:
every call still waiting on it fails at once rather than queue behind a pass that never ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_Job = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (cancelled) meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ModelWorker:
    """A single dedicated daemon thread with an awaitable ``call``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._busy_since: float | None = None
        # Calls not answered yet, kept on the event loop's side so abandon() can fail them.
        self._pending: set[asyncio.Future[Any]] = set()
        # Set by abandon(): the thread runs no further job, and new calls fail with it.
        self._abandoned: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy_for(self) -> float:
        """Seconds the current job has been running (0 when idle)."""
        started = self._busy_since
        return 0.0 if started is None else time.monotonic() - started

    @property
    def abandoned(self) -> bool:
        """True once :meth:`abandon` gave up on this thread."""
        return self._abandoned is not None

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn`` on this worker's thread, with the caller's context (request ids in logs).

        Raises the abandon error at once on an abandoned worker: its thread may never be free.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if self._abandoned is not None:
            future.set_exception(self._abandoned)
            return await future
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        bound = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        self._jobs.put((bound, future, loop))
        return await future

    def close(self) -> None:
        """Let the thread end after its current job; queued jobs still run first."""
        self._jobs.put(None)

    def abandon(self, error: BaseException) -> None:
        """Give up on this thread: fail every unanswered call with ``error``, run no queued job.

        For a thread stuck in a job that may never return (a hung forward pass): Python cannot
        interrupt it, so nothing may wait for it. The thread is a daemon, so it cannot hold the
        process at exit, and it ends as soon as its current job returns, if ever. Call it on
        the event loop that made the calls (their futures belong to it).
        """
        self._abandoned = error
        self._jobs.put(None)
        for future in list(self._pending):
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._abandoned is not None:  # its callers were failed already; run nothing more
                return
            fn, future, loop = job
            self._busy_since = time.monotonic()
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn()
            except BaseException as exc:  # every failure goes back to the caller
                error = exc
            finally:
                self._busy_since = None
            try:
                loop.call_soon_threadsafe(_resolve, future, result, error)
            except RuntimeError:  # the event loop is closed: nobody is waiting any more
                return
