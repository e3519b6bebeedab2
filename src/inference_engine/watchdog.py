"""The watchdog: notices a model whose batch loop died or whose forward pass hangs.

A hang is the failure users of other servers report most: ``/health`` stays green while every
request to the model waits forever. Here the model turns not-ready within
``max_forward_s + check_interval_s``, its queued requests fail fast with 503, and it is
reloaded; ``/ready`` turns green again only after the reload's canary inference succeeds.
A reload that fails is retried with exponential backoff; after
``watchdog.max_failed_recoveries`` failures in a row the liveness probe fails too (see
:meth:`InferenceService.liveness`), so the orchestrator replaces a process that cannot recover.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from inference_engine.service import InferenceService, ModelRuntime, ModelState
from inference_engine.settings import WatchdogSettings

logger = logging.getLogger("inference_engine.watchdog")


def diagnose(runtime: ModelRuntime, max_forward_s: float) -> tuple[str, str] | None:
    """``(kind, reason)`` when a ready model is unhealthy, else ``None``."""
    if runtime.state is not ModelState.READY:
        return None
    if not runtime.alive:
        return "loop_died", "its batch loop ended"
    for worker in runtime.workers:
        busy = worker.busy_for
        if busy > max_forward_s:
            return "hung", f"a forward pass has run for {busy:.1f} s (limit {max_forward_s:g} s)"
    return None


class Watchdog:
    """Checks every model every ``check_interval_s`` and has the service restart sick ones."""

    def __init__(self, service: InferenceService, settings: WatchdogSettings) -> None:
        self._service = service
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self._restarts: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._settings.enabled:
            self._task = asyncio.create_task(self._run(), name="watchdog")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._restarts) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.check_interval_s)
            for runtime in self._service.runtimes():
                found = diagnose(runtime, self._settings.max_forward_s)
                if found is not None:
                    kind, reason = found
                    self._spawn(self._service.restart(runtime, reason, kind))
                elif self._retry_due(runtime):
                    self._spawn(self._service.retry_recovery(runtime))

    def _retry_due(self, runtime: ModelRuntime) -> bool:
        """A failed recovery whose backoff has passed (and no reload of it under way)."""
        if runtime.state is not ModelState.FAILED or runtime.failed_recoveries == 0:
            return False
        backoff = min(
            self._settings.retry_backoff_s * 2.0 ** (runtime.failed_recoveries - 1),
            self._settings.max_retry_backoff_s,
        )
        return time.monotonic() - runtime.last_recovery_at >= backoff

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)
