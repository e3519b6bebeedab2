"""The thread that owns one model instance.

Everything that touches the model (load, warm-up, forward passes, unload) runs on this one
thread, so device contexts and thread-local state of the framework stay put, and the event
loop never blocks on a forward pass.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class ModelWorker:
    """A single dedicated thread with an awaitable ``call``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn`` on this worker's thread, with the caller's context (request ids in logs)."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        bound = functools.partial(context.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, bound)

    def close(self) -> None:
        """Stop accepting work; a forward pass already running finishes on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
