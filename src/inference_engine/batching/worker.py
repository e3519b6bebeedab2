"""The thread that owns one model instance.

Everything that touches the model (load, warm-up, forward passes, unload) runs on this one
thread, so device contexts and thread-local state of the framework stay put, and the event
loop never blocks on a forward pass.

The thread is a daemon: a forward pass that hangs forever (a wedged driver, a deadlock in
native code) cannot be killed from Python, so the watchdog abandons such a worker and starts
a new one, and the abandoned thread must not keep the process alive at exit.
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
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy_for(self) -> float:
        """Seconds the current job has been running (0 when idle)."""
        started = self._busy_since
        return 0.0 if started is None else time.monotonic() - started

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn`` on this worker's thread, with the caller's context (request ids in logs)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        bound = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        self._jobs.put((bound, future, loop))
        return await future

    def close(self) -> None:
        """Let the thread end after its current job; queued jobs still run first."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
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
