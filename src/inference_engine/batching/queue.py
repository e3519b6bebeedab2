"""A bounded, fair queue of work items and the rule that turns it into batches.

**Fairness.** Items wait per priority class (``high`` before ``normal`` before ``low``) and,
within a class, per tenant; batches are filled by deficit round-robin across the tenants with
something queued, each tenant's share of the slots in proportion to its weight. One tenant's
flood therefore delays another by at most its share, not by the whole backlog, and with a single
tenant (auth off) this is first come, first served. A full queue still takes an input from a
tenant holding less than its weighted share of it, so a flood cannot lock the others out either;
the queue may then exceed ``maxsize`` by at most the shares of the tenants under theirs.

**Batches.** A batch closes when it holds ``max_size`` items or when ``max_delay`` has passed
since its *first item was enqueued* (Triton's rule): an item that already waited while the model
was busy is not made to wait again, so at low load the delay adds at most itself to latency and
at high load batches fill from the backlog at once. Waiting is event-driven, never polled.

With ``incoming`` (the number of inputs still being decoded for this queue) the batch also
closes as soon as the queue is empty and nothing is on its way: waiting then could only add
latency, never batch size. A lone request therefore runs at once instead of paying the delay.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from opentelemetry.trace import SpanContext

from inference_engine.errors import QueueFull
from inference_engine.tenancy import ANONYMOUS, PRIORITIES, Priority

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
    tenant: str = ANONYMOUS
    weight: float = 1.0
    priority: Priority = "normal"
    #: When admission predicted it would be answered (``time.monotonic()``), if it predicted.
    predicted_at: float | None = None


class _RoundRobin(Generic[T]):
    """One priority class: a queue per tenant, served by deficit round-robin (unit cost per item)."""

    def __init__(self) -> None:
        self.queues: dict[str, deque[WorkItem[T]]] = {}
        self.deficit: dict[str, float] = {}
        self.turns: deque[str] = deque()  # tenants with items, in serving order

    def push(self, item: WorkItem[T]) -> None:
        queue = self.queues.get(item.tenant)
        if queue is None:
            queue = self.queues[item.tenant] = deque()
            self.deficit[item.tenant] = 0.0
            self.turns.append(item.tenant)
        queue.append(item)

    def pop(self) -> WorkItem[T]:
        while True:
            tenant = self.turns[0]
            queue = self.queues[tenant]
            if self.deficit[tenant] < 1.0:
                # Its turn: one quantum (its weight). Under one slot's worth it passes and saves it.
                self.deficit[tenant] += queue[0].weight
                if self.deficit[tenant] < 1.0:
                    self.turns.rotate(-1)
                    continue
            item = queue.popleft()
            self.deficit[tenant] -= 1.0
            if not queue:  # an idle tenant keeps no credit (DRR)
                del self.queues[tenant], self.deficit[tenant]
                self.turns.popleft()
            elif self.deficit[tenant] < 1.0:
                self.turns.rotate(-1)
            return item

    def drain(self) -> list[WorkItem[T]]:
        items = [item for queue in self.queues.values() for item in queue]
        self.queues.clear()
        self.deficit.clear()
        self.turns.clear()
        return items


class BatchQueue(Generic[T]):
    """Bounded fair queue of :class:`WorkItem`; a full queue refuses at once instead of blocking."""

    def __init__(self, maxsize: int, on_depth: Callable[[int], None] | None = None) -> None:
        self.maxsize = maxsize
        self._classes: dict[Priority, _RoundRobin[T]] = {p: _RoundRobin() for p in PRIORITIES}
        self._size = 0
        self._per_tenant: Counter[str] = Counter()
        self._weights: dict[str, float] = {}
        self._nonempty = asyncio.Event()
        self._on_depth = on_depth or (lambda depth: None)

    def __len__(self) -> int:
        return self._size

    def queued_for(self, tenant: str) -> int:
        return self._per_tenant[tenant]

    def has_room(self, tenant: str = ANONYMOUS, weight: float = 1.0, extra: int = 0) -> bool:
        """Room for one more input of ``tenant`` (with ``extra`` more on their way in front of it):
        under ``maxsize``, or under the tenant's weighted share of it."""
        if self._size + extra < self.maxsize:
            return True
        weights = sum(w for t, w in self._weights.items() if t != tenant) + weight
        share = self.maxsize * weight / weights
        return self._per_tenant[tenant] < share

    def ahead_of(self, tenant: str, weight: float, priority: Priority) -> int:
        """How many queued items would leave before one more of ``tenant`` queued now: every item
        of a higher class, its own tenant's, and of each other tenant in its class as many as
        deficit round-robin serves while it waits (in proportion to the weights)."""
        ahead = 0
        for level in PRIORITIES:
            ring = self._classes[level]
            if level != priority:
                ahead += sum(len(queue) for queue in ring.queues.values())
                continue
            own = len(ring.queues.get(tenant, ()))
            rounds = (own + 1) / weight
            for other, queue in ring.queues.items():
                if other != tenant:
                    ahead += min(len(queue), int(rounds * queue[0].weight))
            return ahead + own
        return ahead

    def put(self, item: WorkItem[T], retry_after_s: float = 1.0) -> None:
        """Enqueue or raise :class:`QueueFull` (HTTP 503 with ``Retry-After``)."""
        if not self.has_room(item.tenant, item.weight):
            raise QueueFull(
                f"the queue is full ({self.maxsize} requests waiting); retry shortly",
                retry_after_s=retry_after_s,
            )
        self._classes[item.priority].push(item)
        self._size += 1
        self._per_tenant[item.tenant] += 1
        self._weights[item.tenant] = item.weight
        self._nonempty.set()
        self._on_depth(self._size)

    def get_nowait(self) -> WorkItem[T]:
        """The next item by priority, then by deficit round-robin across tenants."""
        for priority in PRIORITIES:
            ring = self._classes[priority]
            if ring.turns:
                item = ring.pop()
                self._taken(item)
                return item
        raise asyncio.QueueEmpty

    def _taken(self, item: WorkItem[T]) -> None:
        self._size -= 1
        left = self._per_tenant[item.tenant] - 1
        if left:
            self._per_tenant[item.tenant] = left
        else:
            del self._per_tenant[item.tenant]
            self._weights.pop(item.tenant, None)
        if not self._size:
            self._nonempty.clear()

    async def get(self) -> WorkItem[T]:
        """Wait for an item. Cancelled or timed out while waiting, it takes nothing."""
        while not self._size:
            await self._nonempty.wait()
        return self.get_nowait()

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
            first = await self.get()
            self._on_depth(self._size)
            if admit(first):
                batch.append(first)
        due = batch[0].enqueued_at + max_delay_s
        while len(batch) < max_size:
            try:
                item = self.get_nowait()
            except asyncio.QueueEmpty:
                remaining = due - time.monotonic()
                if patience is not None:
                    remaining = min(remaining, patience())
                if remaining <= 0 or (incoming is not None and incoming() <= 0):
                    break
                try:
                    # A cancellation or the timeout reaches get() while it waits, when it has
                    # taken nothing; once it has an item it returns without another await.
                    async with asyncio.timeout(remaining):
                        item = await self.get()
                except TimeoutError:
                    break
            if admit(item):
                batch.append(item)
        self._on_depth(self._size)
        return batch

    def drain_nowait(self) -> list[WorkItem[T]]:
        """Remove and return everything still queued (used at shutdown)."""
        items = [item for ring in self._classes.values() for item in ring.drain()]
        self._size = 0
        self._per_tenant.clear()
        self._weights.clear()
        self._nonempty.clear()
        self._on_depth(0)
        return items
