"""What every transport (HTTP in ``api/``, gRPC in ``rpc/``) shares besides the service itself.

Kept out of both packages so that neither imports the other: a gRPC-only process never loads the
web framework's routes for these few lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import anyio.to_thread

T = TypeVar("T")

#: Longest routing key (``X-Routing-Key`` header, ``x-routing-key`` metadata) accepted.
MAX_ROUTING_KEY = 256
#: Below this size parsing or encoding on the event loop (with orjson: about 3 ms a MiB of
#: numbers) costs less than the hop to a thread and back.
OFF_LOOP_BYTES = 256 * 1024


class Batched(Protocol):
    """An answer that knows the batch it ran in and the version that gave it (for the access
    line, the metrics and the ``X-Model-Version`` header or metadata)."""

    @property
    def batch_size(self) -> int: ...

    @property
    def model_version(self) -> str: ...

    @property
    def cached(self) -> bool | None: ...


async def off_loop(size: int, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on a worker thread when ``size`` bytes make it worth it, else right here.

    Parsing a 20 MiB V2 body or serialising a batch of embeddings on the event loop stalls every
    other request and the batch timers; for a small body the thread hop costs more than the work.
    """
    if size < OFF_LOOP_BYTES:
        return fn(*args)
    return await anyio.to_thread.run_sync(lambda: fn(*args))
