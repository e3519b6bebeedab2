"""The watchdog: notices a model whose batch loop died or whose forward pass hangs.

A hang is the failure users of other servers report most: ``/health`` stays green while every
request to the model waits forever. Here the model turns not-ready within
``max_forward_s + check_interval_s``, its queued requests fail fast with 503, and it is
reloaded; ``/ready`` turns green again only after the reload's canary inference succeeds.
"""

from __future__ import annotations

import asyncio
import logging

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
            for runtime in list(self._service.runtimes.values()):
                found = diagnose(runtime, self._settings.max_forward_s)
                if found is not None:
                    kind, reason = found
                    task = asyncio.create_task(self._service.restart(runtime, reason, kind))
                    self._restarts.add(task)
                    task.add_done_callback(self._restarts.discard)
