"""One input through the stages: prepared in the worker pool, queued, batched, answered.

:class:`InputPipeline` is the service's engine room: it decodes or tokenises an input in the
worker pool (announced to the batcher meanwhile, so a forming batch waits for it), submits it
to the model's batcher under the request's deadline, and records the queue-wait and inference
spans. Where the model re-uses answers (:mod:`inference_engine.reuse`), an image whose
pre-processed pixels were answered before is answered from the cache, and one identical to an
input in flight shares its run. Which model, which capability and which outputs are the
service's decisions, not its.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import trace

from inference_engine.answers import Modality
from inference_engine.batching import BatchResult
from inference_engine.errors import DeadlineExceeded
from inference_engine.imaging import ImageLimits, decode_image
from inference_engine.metrics import Metrics
from inference_engine.models.base import ModelHandler
from inference_engine.models.capabilities import TextEncoder
from inference_engine.reuse import CacheKey, Reuse, pixel_digest
from inference_engine.runtime import ModelRuntime
from inference_engine.tenancy import DEFAULT_CALLER, Caller

R = TypeVar("R")

#: Work on fewer bytes than this (checking a small tensor row) is cheaper than a thread hop.
POOL_BYTES = 256 * 1024
A = TypeVar("A")
B = TypeVar("B")


@dataclass(frozen=True)
class InputRun:
    """One input's output from a batch, and what it cost."""

    output: Any
    preprocess_s: float
    queue_s: float
    inference_s: float
    batch_size: int
    item: Any = None  # the prepared input, as the batcher took it
    cached: bool = False  # answered from the output cache (no queue, no forward pass)


@dataclass(frozen=True)
class Prepared:
    """Inputs ``handler`` decoded and pre-processed already: another version whose
    pre-processing is the same (a shadow of the same network) queues them as they are."""

    handler: ModelHandler[Any, Any]
    items: list[Any]

    def fits(self, other: ModelHandler[Any, Any]) -> bool:
        """``other`` would prepare the same inputs: the same ``preprocess`` code, settings and size."""
        if type(self.handler).preprocess is not type(other).preprocess:
            return False
        if self.handler.decode_min_side() != other.decode_min_side():
            return False
        keys = {"preprocessing", "dtype", "device", "options", "handler", "backend"}
        return self.handler.config.model_dump(include=keys) == other.config.model_dump(include=keys)


class InputPipeline:
    """Prepares inputs in a worker pool and runs them through a model's batchers."""

    def __init__(
        self,
        metrics: Metrics,
        tracer: trace.Tracer,
        limits: ImageLimits,
        workers: int,
        admit: Callable[[ModelRuntime], object],
    ) -> None:
        self.metrics = metrics
        self.limits = limits
        self._tracer = tracer
        # Called again right before queueing: the server may have begun draining, or the model
        # restarting, while the input was being prepared.
        self._admit = admit
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")

    async def in_pool(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` on a worker thread, with this request's context (its id in log lines)."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._pool, functools.partial(context.run, fn, *args))

    async def in_pool_if(self, size: int, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` in the pool when ``size`` bytes make the hop worth it, else right here."""
        if size < POOL_BYTES:
            return fn(*args)
        return await self.in_pool(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def image(
        self, runtime: ModelRuntime, handler: ModelHandler[Any, Any], data: bytes, deadline: float,
        request_id: str, caller: Caller = DEFAULT_CALLER,
    ) -> InputRun:  # fmt: skip
        started = time.monotonic()
        reuse = runtime.reuse
        with _announced(runtime, "image", deadline, caller), self._tracer.start_as_current_span("decode"):
            item, digest = await self.in_pool(_prepare, handler, data, self.limits, reuse is not None)
        preprocess_s = time.monotonic() - started
        self.metrics.preprocess_duration.labels(*runtime.labels).observe(preprocess_s)
        if reuse is None or digest is None:
            return await self.submit(runtime, "image", item, preprocess_s, deadline, request_id, caller)
        key = ("image", digest)
        return await self._reused(reuse, key, runtime, item, preprocess_s, deadline, request_id, caller)

    async def _reused(
        self, reuse: Reuse, key: CacheKey, runtime: ModelRuntime, item: Any, preprocess_s: float,
        deadline: float, request_id: str, caller: Caller,
    ) -> InputRun:  # fmt: skip
        """An input's run through the model's output cache and in-flight merging."""
        if reuse.cache is not None:
            output = reuse.cache.get(key)
            if output is not None:
                return InputRun(output, preprocess_s, 0.0, 0.0, 0, item, cached=True)

        if reuse.flights is None:
            run = await self.submit(runtime, "image", item, preprocess_s, deadline, request_id, caller)
        else:
            # Queued at once by whichever caller starts the flight (no task in between: the
            # input stays counted, announced or queued, so a forming batch waits for it).
            result = await reuse.flights.run(
                key, lambda: self.enqueue(runtime, "image", item, deadline, request_id, caller), deadline
            )
            run = self._answered(result, preprocess_s, item)
        if reuse.cache is not None:
            reuse.cache.put(key, run.output)
        return run

    async def text(
        self,
        runtime: ModelRuntime,
        encoder: TextEncoder,
        prompts: list[str],
        deadline: float,
        request_id: str,
        caller: Caller = DEFAULT_CALLER,
    ) -> InputRun:
        started = time.monotonic()
        with _announced(runtime, "text", deadline, caller), self._tracer.start_as_current_span("tokenize"):
            item = await self.in_pool(encoder.preprocess_text, prompts)
        preprocess_s = time.monotonic() - started
        return await self.submit(runtime, "text", item, preprocess_s, deadline, request_id, caller)

    async def submit(
        self, runtime: ModelRuntime, modality: Modality, item: Any, preprocess_s: float, deadline: float,
        request_id: str, caller: Caller = DEFAULT_CALLER,
    ) -> InputRun:  # fmt: skip
        future = self.enqueue(runtime, modality, item, deadline, request_id, caller)
        remaining = deadline - time.monotonic()
        try:
            result: BatchResult[Any] = await asyncio.wait_for(future, timeout=max(remaining, 0.0))
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within the request deadline ({runtime.name})") from None
        return self._answered(result, preprocess_s, item)

    def enqueue(
        self, runtime: ModelRuntime, modality: Modality, item: Any, deadline: float, request_id: str,
        caller: Caller,
    ) -> asyncio.Future[Any]:  # fmt: skip
        """Queue a prepared input on the model's batcher; the future resolves to its
        :class:`~inference_engine.batching.BatchResult` (refusals raise here, at once)."""
        self._admit(runtime)
        batcher = runtime.batchers[modality]  # ready implies running batchers
        request_span = trace.get_current_span().get_span_context()
        return batcher.submit(
            item, deadline=deadline, request_id=request_id, span_context=request_span, caller=caller
        )

    def _answered(self, result: BatchResult[Any], preprocess_s: float, item: Any) -> InputRun:
        self._record_batch_spans(result)
        return InputRun(
            result.output, preprocess_s, result.queue_s, result.inference_s, result.batch_size, item
        )

    def _record_batch_spans(self, result: BatchResult[Any]) -> None:
        """Queue-wait and inference spans for this request, timed from what the batcher measured."""
        batch_started_ns = result.started_ns
        enqueued_ns = batch_started_ns - int(result.queue_s * 1e9)
        self._tracer.start_span("queue_wait", start_time=enqueued_ns).end(end_time=batch_started_ns)
        span = self._tracer.start_span(
            "inference",
            start_time=batch_started_ns,
            attributes={
                "inference_engine.batch.size": result.batch_size,
                "inference_engine.batch.id": result.batch_id,
            },
        )
        span.end(end_time=batch_started_ns + int(result.inference_s * 1e9))


@contextlib.contextmanager
def _announced(runtime: ModelRuntime, modality: Modality, deadline: float, caller: Caller) -> Iterator[None]:
    """The batcher's ``incoming()`` for one input being prepared, refused at once when the queue
    has no room for it or (predictive admission) it would miss its deadline; nothing is
    announced while the model restarts: submit refuses then."""
    batcher = runtime.batchers.get(modality)
    if batcher is None:
        yield
        return
    with batcher.incoming():
        batcher.check_room(deadline=deadline, caller=caller)  # counts this input, now announced
        yield


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Await two things concurrently; on the first failure cancel the other."""
    a, b = await gather_or_cancel(first, second)
    return a, b


async def gather_or_cancel(*work: Awaitable[Any]) -> list[Any]:
    """Await all of ``work`` in order; on the first failure cancel the rest (they would be wasted)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _prepare(
    handler: ModelHandler[Any, Any], data: bytes, limits: ImageLimits, digest: bool
) -> tuple[Any, bytes | None]:
    """Decode and pre-process one request with ``handler`` (worker pool thread); with ``digest``,
    also hash the pre-processed pixels (the output cache's key), here off the event loop."""
    image = decode_image(data, limits, min_side=handler.decode_min_side())
    item = handler.preprocess(image)
    return item, pixel_digest(item) if digest else None
