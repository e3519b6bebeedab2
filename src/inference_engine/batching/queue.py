"""A bounded queue of work items and the rule that turns it into batches.

A batch closes when it holds ``max_size`` items or when ``max_delay`` has passed since its
*first item was enqueued* (Triton's rule): an item that already waited while the model was busy
is not made to wait again, so at low load the delay adds at most itself to latency and at high
load batches fill from the backlog at once. Waiting is event-driven, never polled.

With ``incoming`` (the number of inputs still being decoded for this queue) the batch also
closes as soon as the queue is empty and nothing is on its way: waiting then could only add
latency, never batch size. A lone request therefore runs at once instead of paying the delay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from opentelemetry.trace import SpanContext

from inference_engine.errors import QueueFull

T = TypeVar("T")


@dataclass(eq=False)
class WorkItem(Generic[T]):
    """One input waiting for a forward pass, and the future its request awaits."""

    payload: T
    future: asyncio.Future[Any]
    deadline: float
    request_id: str = "-"
    enqueued_at: float = field(default_factory=time.monotonic)
    span_context: SpanContext | None = None  # the request's trace, linked from the batch span


class BatchQueue(Generic[T]):
    """Bounded FIFO of :class:`WorkItem`; a full queue refuses at once instead of blocking."""

    def __init__(self, maxsize: int, on_depth: Callable[[int], None] | None = None) -> None:
        self.maxsize = maxsize
        self._queue: asyncio.Queue[WorkItem[T]] = asyncio.Queue(maxsize)
        self._on_depth = on_depth or (lambda depth: None)

    def __len__(self) -> int:
        return self._queue.qsize()

    def put(self, item: WorkItem[T], retry_after_s: float = 1.0) -> None:
        """Enqueue or raise :class:`QueueFull` (HTTP 503 with ``Retry-After``)."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise QueueFull(
                f"the queue is full ({self.maxsize} requests waiting); retry shortly",
                retry_after_s=retry_after_s,
            ) from None
        self._on_depth(self._queue.qsize())

    async def next_batch(
        self,
        max_size: int,
        max_delay_s: float,
        admit: Callable[[WorkItem[T]], bool],
        incoming: Callable[[], int] | None = None,
        *,
        patience: Callable[[], float] | None = None,
        into: list[WorkItem[T]] | None = None,
    ) -> list[WorkItem[T]]:
        """Wait for one admitted item, then gather more until the batch is full or due.

        ``admit`` returns False for items that must not run (client gone, deadline passed);
        they are dropped here so they never take a slot in a forward pass. ``incoming``, when
        given, says how many items are still on their way; at 0 an empty queue closes the batch.
        ``patience``, when given, says how long (seconds from now) a batch whose queue ran empty
        waits for one more item, within ``max_delay_s`` of the first (:mod:`.delay`).

        The batch is built in ``into`` (a new list when not given) and returned. An item taken
        off the queue is appended to it before the next ``await``, so a caller cancelled while
        the batch forms still holds every item that left the queue and can resolve it: those
        items are in no queue any more, and nobody else would.
        """
        batch: list[WorkItem[T]] = [] if into is None else into
        while not batch:
            first = await self._queue.get()
            self._on_depth(self._queue.qsize())
            if admit(first):
                batch.append(first)
        due = batch[0].enqueued_at + max_delay_s
        while len(batch) < max_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = due - time.monotonic()
                if patience is not None:
                    remaining = min(remaining, patience())
                if remaining <= 0 or (incoming is not None and incoming() <= 0):
                    break
                try:
                    # Not wait_for: on 3.11 it runs get() in a task of its own, and a
                    # cancellation that lands just as that task takes an item is swallowed.
                    # Here a cancellation or the timeout reaches get() itself, which then
                    # leaves the item in the queue.
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
                except TimeoutError:
                    break
            if admit(item):
                batch.append(item)
        self._on_depth(self._queue.qsize())
        return batch

    def drain_nowait(self) -> list[WorkItem[T]]:
        """Remove and return everything still queued (used at shutdown)."""
        items: list[WorkItem[T]] = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                self._on_depth(0)
                return items
