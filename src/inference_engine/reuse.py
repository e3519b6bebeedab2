"""Answers re-used for identical pixels: an output cache, and duplicates merged in flight.

The response caches of other servers (Triton, MLServer, infinity) hash the request as it came,
so the same photo resent as PNG, or with other metadata, misses. Here the key is a hash of the
*pre-processed input tensor* (what the network actually sees) plus the model, version and kind
of input: whatever encoding produced those pixels, the answer is the same one. Decoding still
runs (it is how the pixels are known); the queue and the forward pass are skipped.

* :class:`OutputCache`: an LRU of model outputs bounded in bytes, per model version.
* :class:`Flights`: an input identical to one already queued or running shares that one's slot
  in a batch and its answer (singleflight), each caller keeping its own deadline and
  cancellation: the shared work is cancelled only when nobody waits for it any more, and a
  caller that outlives the deadline the shared work ran under runs it again for itself.

Both are per :class:`~inference_engine.runtime.ModelRuntime` (so per version: new weights never
answer from an old version's entries) and off unless a model's ``cache`` section turns them on.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from inference_engine.errors import DeadlineExceeded
from inference_engine.metrics import Metrics
from inference_engine.models.config import CacheConfig

T = TypeVar("T")

#: A cached output: the kind of input ("image") and the digest of its pre-processed tensor.
CacheKey = tuple[str, bytes]
#: What one entry costs beyond its arrays (key, bookkeeping), so many tiny outputs stay bounded.
ENTRY_OVERHEAD_BYTES = 200


def pixel_digest(item: Any) -> bytes | None:
    """SHA-256 of a pre-processed input (arrays, tensors, or mappings and sequences of them),
    over dtype, shape and bytes; ``None`` for a kind of input it cannot hash (no re-use then)."""
    digest = hashlib.sha256()
    try:
        return digest.digest() if _feed(digest, item) else None
    except (TypeError, RuntimeError):  # a tensor numpy cannot hold (bfloat16): no re-use
        return None


def _feed(digest: Any, item: Any) -> bool:
    if isinstance(item, np.ndarray):
        array = np.ascontiguousarray(item)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
        return True
    if type(item).__module__ == "torch" and hasattr(item, "detach"):  # a tensor, without importing torch
        return _feed(digest, item.detach().cpu().numpy())
    if isinstance(item, Mapping):
        for key in sorted(item, key=str):
            digest.update(str(key).encode())
            if not _feed(digest, item[key]):
                return False
        return True
    if isinstance(item, list | tuple):
        digest.update(f"[{len(item)}]".encode())
        return all(_feed(digest, part) for part in item)
    return False


def output_bytes(output: Any) -> int:
    """Bytes an output holds (its arrays), plus the per-entry overhead."""
    return ENTRY_OVERHEAD_BYTES + _array_bytes(output)


def _array_bytes(output: Any) -> int:
    if isinstance(output, np.ndarray):
        return int(output.nbytes)
    if isinstance(output, Mapping):
        return sum(_array_bytes(value) for value in output.values())
    if isinstance(output, list | tuple):
        return sum(_array_bytes(value) for value in output)
    return 64  # a scalar or a small object


def _frozen(output: Any) -> Any:
    """The output as an entry keeps it: an array made read-only (an entry answers many requests,
    and no answer may change it for the next) and, when it is a row of its batch's array, copied
    out of it (kept as it is, one small row would hold the whole batch in memory, past the bound)."""
    if isinstance(output, np.ndarray):
        if output.base is not None:
            output = output.copy()
        output.flags.writeable = False
    return output


class OutputCache:
    """An LRU of one model version's outputs, bounded in bytes."""

    def __init__(self, max_bytes: int, labels: tuple[str, str], metrics: Metrics) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self._hits = metrics.cache_lookups.labels(*labels, "hit")
        self._misses = metrics.cache_lookups.labels(*labels, "miss")
        self._bytes_gauge = metrics.cache_bytes.labels(*labels)
        self._entries_gauge = metrics.cache_entries.labels(*labels)
        self._evictions = metrics.cache_evictions.labels(*labels)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> Any | None:
        """The output stored under ``key`` (now the most recently used), or ``None``."""
        entry = self._entries.get(key)
        if entry is None:
            self._misses.inc()
            return None
        self._entries.move_to_end(key)
        self._hits.inc()
        return entry[0]

    def put(self, key: CacheKey, output: Any) -> None:
        """Store ``output``, evicting the least recently used past the bound (an output larger
        than the whole bound is not stored)."""
        size = output_bytes(output)
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = (_frozen(output), size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
            self._evictions.inc()
        self._bytes_gauge.set(self.bytes)
        self._entries_gauge.set(len(self._entries))


@dataclass(eq=False)
class _Flight:
    future: asyncio.Future[Any]
    waiting: int = 0


class Flights:
    """Identical inputs in flight share one run (singleflight)."""

    def __init__(self, labels: tuple[str, str], metrics: Metrics) -> None:
        self._flights: dict[CacheKey, _Flight] = {}
        self._merged = metrics.merged_inputs.labels(*labels)

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: CacheKey, start: Callable[[], asyncio.Future[T]], deadline: float) -> T:
        """The result of the future ``start()`` returns (an input queued on a batcher), shared
        with every caller of the same ``key`` while it is pending.

        ``start`` runs at once, in the caller's step (a refusal raises from it, and the input is
        queued with no task switch in between). This caller waits until its own ``deadline``
        (504 past it) and may be cancelled on its own; the shared future is cancelled (its input
        dropped before its batch) when its last caller leaves. A run that failed with a deadline
        (the one it was queued under, its starter's) is queued again for a caller with time left.
        """
        while True:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._start(key, start)
            else:
                self._merged.inc()
            flight.waiting += 1
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    return await asyncio.shield(flight.future)
            except TimeoutError:
                raise DeadlineExceeded("no answer within the request deadline") from None
            except DeadlineExceeded:
                if time.monotonic() >= deadline:
                    raise
                # Its run's deadline was another caller's; this one still has time: go again.
            finally:
                flight.waiting -= 1
                if not flight.waiting and not flight.future.done():
                    flight.future.cancel()  # nobody waits for it: give its batch slot back

    def _start(self, key: CacheKey, start: Callable[[], asyncio.Future[T]]) -> _Flight:
        flight = _Flight(start())
        self._flights[key] = flight

        def landed(future: asyncio.Future[Any]) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if not future.cancelled():
                future.exception()  # retrieved: a failure nobody waited for is not "never retrieved"

        flight.future.add_done_callback(landed)
        return flight


class Reuse:
    """One model version's output cache and in-flight merging, as its ``cache`` section asks."""

    def __init__(self, config: CacheConfig, labels: tuple[str, str], metrics: Metrics) -> None:
        self.cache = OutputCache(config.max_bytes, labels, metrics) if config.enabled else None
        self.flights = Flights(labels, metrics) if config.merge_in_flight else None
