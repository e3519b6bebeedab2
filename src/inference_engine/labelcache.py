"""Label embeddings for zero-shot requests: a bounded LRU with one computation per label.

A zero-shot request that brings its own labels needs one text embedding per label (averaged
over the model's prompt templates). Clients tend to send the same few label sets over and over,
so embeddings are kept in a least-recently-used cache; concurrent requests that miss on the same
label share one computation instead of each running the text tower. That computation belongs to
no request: it runs in its own context under its own deadline, each waiter gives up on its own
deadline, and it goes on (filling the cache) when the request that started it has gone.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from inference_engine.metrics import Metrics
from inference_engine.models.base import Embedding

Compute = Callable[[str], Awaitable[Embedding]]


class LabelEmbeddingCache:
    """Label text -> embedding, at most ``capacity`` entries, shared by every request to one model."""

    def __init__(self, model: tuple[str, str], capacity: int, metrics: Metrics) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, Embedding] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Embedding]] = {}
        self._hits = metrics.label_cache_lookups.labels(*model, "hit")
        self._misses = metrics.label_cache_lookups.labels(*model, "miss")

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, label: str, embedding: Embedding) -> None:
        self._entries[label] = embedding
        self._entries.move_to_end(label)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    async def embeddings(self, labels: Sequence[str], compute: Compute) -> Embedding:
        """``[len(labels), dim]`` embeddings in the order given, computing the missing ones once."""
        found: dict[str, Embedding] = {}
        waits: dict[str, asyncio.Future[Embedding]] = {}
        for label in dict.fromkeys(labels):
            cached = self._entries.get(label)
            if cached is not None:
                self._entries.move_to_end(label)
                self._hits.inc()
                found[label] = cached
                continue
            self._misses.inc()
            pending = self._pending.get(label)
            if pending is None:
                # A fresh context: the work is nobody's request, so it must not log under (or be
                # traced as) whichever request happened to miss first.
                loop = asyncio.get_running_loop()
                pending = loop.create_task(self._compute(label, compute), context=contextvars.Context())
                # Every waiter may have given up; the outcome must still count as retrieved.
                pending.add_done_callback(lambda f: f.cancelled() or f.exception())
                self._pending[label] = pending
            waits[label] = pending
        if waits:
            # shield: one request giving up must not cancel a computation others wait on.
            results = await asyncio.gather(*(asyncio.shield(f) for f in waits.values()))
            found.update(zip(waits, results, strict=True))
        return np.stack([found[label] for label in labels])

    async def _compute(self, label: str, compute: Compute) -> Embedding:
        try:
            embedding = await compute(label)
            # A broken text tower's NaN must not outlive the request that saw it (the cache
            # survives restarts); the service refuses it for the waiters (500 model_failed).
            if np.isfinite(embedding).all():
                self.put(label, embedding)
            return embedding
        finally:
            self._pending.pop(label, None)
