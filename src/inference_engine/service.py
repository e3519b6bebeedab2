"""The data plane: decode -> submit -> await -> format. No HTTP types here.

:class:`InferenceService` owns the models (each a :class:`ModelRuntime`), the worker pool that
decodes images, and start-up / shutdown. Any transport (REST today, others later) calls
:meth:`InferenceService.infer` and formats what it gets back.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry import trace
from PIL import Image

from inference_engine.batching import BatchPolicy, BatchResult, DynamicBatcher, ModelWorker
from inference_engine.errors import (
    DeadlineExceeded,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ShuttingDown,
)
from inference_engine.imaging import ImageLimits, decode_image
from inference_engine.metrics import Metrics
from inference_engine.models.base import ModelConfig, ModelHandler
from inference_engine.models.loader import BrokenModel, ModelSpec

logger = logging.getLogger("inference_engine.service")

R = TypeVar("R")


class ModelState(enum.StrEnum):
    PENDING = "pending"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    RECOVERING = "recovering"
    STOPPED = "stopped"


@dataclass
class ModelRuntime:
    """One served model: its spec, instances, batcher, and what happened while loading."""

    name: str
    spec: ModelSpec | None
    state: ModelState = ModelState.PENDING
    error: str | None = None
    handlers: list[ModelHandler[Any, Any]] = field(default_factory=list)
    workers: list[ModelWorker] = field(default_factory=list)
    batcher: DynamicBatcher[Any, Any] | None = None
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    restarts: int = 0

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY and self.batcher is not None and self.batcher.alive

    def not_ready_reason(self) -> str:
        if self.state is ModelState.READY and not self.ready:
            return "its batch loop is not running"
        if self.state is ModelState.FAILED:
            return f"it failed to load: {self.error}"
        if self.state is ModelState.RECOVERING:
            return f"it is restarting: {self.error}"
        return f"it is {self.state.value}"

    @property
    def config(self) -> ModelConfig:
        if self.spec is None:
            raise ModelNotReady(f"model {self.name} is not ready: {self.not_ready_reason()}")
        return self.spec.config

    def policy(self) -> BatchPolicy:
        config = self.config
        assert config.max_batch_size is not None
        assert config.max_queue_size is not None
        return BatchPolicy(config.max_batch_size, config.max_batch_delay_ms or 0.0, config.max_queue_size)


@dataclass(frozen=True)
class Prediction:
    """What a transport needs to format one answer."""

    model: str
    model_version: str
    body: dict[str, Any]
    preprocess_s: float
    queue_s: float
    inference_s: float
    batch_size: int


class InferenceService:
    """Loads models, runs requests through them, and shuts them down cleanly."""

    def __init__(
        self,
        specs: list[ModelSpec],
        broken: list[BrokenModel],
        metrics: Metrics,
        *,
        limits: ImageLimits,
        preprocess_workers: int = 0,
        default_model: str | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.metrics = metrics
        self._tracer = tracer or trace.NoOpTracer()
        self.limits = limits
        self.runtimes: dict[str, ModelRuntime] = {spec.name: ModelRuntime(spec.name, spec) for spec in specs}
        for bad in broken:
            self.runtimes[bad.name] = ModelRuntime(bad.name, None, ModelState.FAILED, bad.error)
            metrics.model_load_failures.labels(bad.name).inc()
            metrics.model_ready.labels(bad.name).set(0)
        if default_model is not None and default_model not in self.runtimes:
            served = ", ".join(sorted(self.runtimes)) or "none"
            raise ModelLoadError(
                f"server.default_model {default_model!r} is not a served model (served: {served})"
            )
        self.default_model = default_model or (min(self.runtimes) if self.runtimes else None)
        workers = preprocess_workers or (os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")
        self._draining = False
        self._shutdown_started: float | None = None
        self._load_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading every model in the background; readiness reports progress."""
        for bad in (r for r in self.runtimes.values() if r.state is ModelState.FAILED):
            logger.error("model failed validation", extra={"model": bad.name, "error": bad.error})
        self._load_task = asyncio.create_task(self._load_all(), name="load-models")

    async def wait_loaded(self) -> None:
        """Wait until every model has finished loading (successfully or not)."""
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    async def _load_all(self) -> None:
        pending = [r for r in self.runtimes.values() if r.state is ModelState.PENDING]
        await asyncio.gather(*(self._load(runtime) for runtime in pending))

    async def _load(self, runtime: ModelRuntime) -> None:
        assert runtime.spec is not None
        config = runtime.spec.config
        runtime.state = ModelState.LOADING
        started = time.monotonic()
        try:
            for index in range(config.instances):
                worker = ModelWorker(f"model-{runtime.name}-{index}")
                runtime.workers.append(worker)
                handler = runtime.spec.handler_class(config, runtime.spec.directory)
                await worker.call(handler.load, config.device)
                runtime.handlers.append(handler)
            runtime.load_seconds = time.monotonic() - started
            warm_started = time.monotonic()
            await asyncio.gather(
                *(w.call(h.warmup) for w, h in zip(runtime.workers, runtime.handlers, strict=True))
            )
            runtime.warmup_seconds = time.monotonic() - warm_started
            await asyncio.gather(
                *(w.call(_canary, h) for w, h in zip(runtime.workers, runtime.handlers, strict=True))
            )
        except Exception as exc:
            message = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            runtime.state, runtime.error = ModelState.FAILED, message
            self.metrics.model_load_failures.labels(runtime.name).inc()
            self.metrics.model_ready.labels(runtime.name).set(0)
            logger.error(
                "model failed to load",
                exc_info=not isinstance(exc, ModelLoadError),
                extra={"model": runtime.name, "error": message},
            )
            await self._release(runtime)
            return
        runtime.batcher = DynamicBatcher(
            runtime.name,
            runtime.policy(),
            [(w, h.predict) for w, h in zip(runtime.workers, runtime.handlers, strict=True)],
            self.metrics,
            self._tracer,
        )
        runtime.batcher.start()
        runtime.state = ModelState.READY
        self.metrics.model_load_seconds.labels(runtime.name).set(runtime.load_seconds)
        self.metrics.model_warmup_seconds.labels(runtime.name).set(runtime.warmup_seconds)
        self.metrics.model_ready.labels(runtime.name).set(1)
        logger.info(
            "model ready",
            extra={"model": runtime.name, "load_ms": round(runtime.load_seconds * 1000, 1),
                   "warmup_ms": round(runtime.warmup_seconds * 1000, 1), "instances": config.instances},
        )  # fmt: skip

    async def restart(self, runtime: ModelRuntime, reason: str, kind: str) -> None:
        """Take a model out of service at once, fail its queued work with 503, and reload it.

        A hung forward pass cannot be interrupted from Python: its worker thread is abandoned
        (a daemon, it ends when the pass returns, if ever) and new instances take over.
        """
        if runtime.state is not ModelState.READY or self._draining:
            return
        runtime.state, runtime.error = ModelState.RECOVERING, reason
        runtime.restarts += 1
        self.metrics.model_ready.labels(runtime.name).set(0)
        self.metrics.watchdog_restarts.labels(runtime.name, kind).inc()
        logger.error("model unhealthy; restarting it", extra={"model": runtime.name, "reason": reason})
        if runtime.batcher is not None:
            runtime.batcher.abort(
                ModelNotReady(f"model {runtime.name} is restarting: {reason}", retry_after_s=5.0)
            )
        runtime.batcher = None
        for worker in runtime.workers:
            worker.close()
        runtime.workers.clear()
        runtime.handlers.clear()
        await self._load(runtime)

    def begin_shutdown(self) -> None:
        """Refuse new work from now on (``/ready`` turns 503); queued work still runs.

        Called from the signal handler, before the HTTP server stops accepting connections.
        """
        if self._shutdown_started is None:
            self._shutdown_started = time.monotonic()
        self._draining = True

    async def stop(self, drain_timeout_s: float) -> None:
        """Refuse new work, finish queued work, then unload every model.

        ``drain_timeout_s`` counts from :meth:`begin_shutdown` when that was called, so the
        HTTP server's wait for in-flight requests and this drain share one budget.
        """
        self.begin_shutdown()
        assert self._shutdown_started is not None
        drain_timeout_s = max(0.0, drain_timeout_s - (time.monotonic() - self._shutdown_started))
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            await asyncio.gather(self._load_task, return_exceptions=True)
        batchers = [r.batcher for r in self.runtimes.values() if r.batcher is not None]
        await asyncio.gather(*(b.drain(drain_timeout_s) for b in batchers))
        for runtime in self.runtimes.values():
            if runtime.state is ModelState.READY:
                runtime.state = ModelState.STOPPED
                self.metrics.model_ready.labels(runtime.name).set(0)
            await self._release(runtime)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _release(self, runtime: ModelRuntime) -> None:
        for worker, handler in zip(runtime.workers, runtime.handlers, strict=False):
            try:
                await worker.call(handler.unload)
            except Exception:
                logger.exception("unload failed", extra={"model": runtime.name})
        for worker in runtime.workers:
            worker.close()
        runtime.workers.clear()
        runtime.handlers.clear()

    # -- queries ---------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    def runtime(self, name: str) -> ModelRuntime:
        try:
            return self.runtimes[name]
        except KeyError:
            known = ", ".join(sorted(self.runtimes)) or "none"
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise ModelNotFound(f"no model named {shown!r} (served: {known})") from None

    def readiness(self) -> dict[str, str | None]:
        """Model name -> ``None`` when ready, else why not."""
        return {name: None if r.ready else r.not_ready_reason() for name, r in sorted(self.runtimes.items())}

    # -- the request path ------------------------------------------------------------------

    async def _in_pool(self, fn: Callable[..., R], *args: Any) -> R:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._pool, functools.partial(context.run, fn, *args))

    def _record_batch_spans(self, enqueued_ns: int, result: BatchResult[Any]) -> None:
        """Queue-wait and inference spans for this request, timed from what the batcher measured."""
        batch_started_ns = enqueued_ns + int(result.queue_s * 1e9)
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

    async def infer(
        self, name: str, data: bytes, *, top_k: int | None, deadline: float, request_id: str = "-"
    ) -> Prediction:
        """Run one encoded image through model ``name``; raise an ``EngineError`` on any failure."""
        runtime = self.runtime(name)
        self._check_ready(runtime)
        with self.metrics.in_flight.labels(name).track_inprogress():
            return await self._infer(runtime, data, top_k=top_k, deadline=deadline, request_id=request_id)

    def _check_ready(self, runtime: ModelRuntime) -> None:
        if self._draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if not runtime.ready:
            raise ModelNotReady(f"model {runtime.name} is not ready: {runtime.not_ready_reason()}")

    async def _infer(
        self, runtime: ModelRuntime, data: bytes, *, top_k: int | None, deadline: float, request_id: str
    ) -> Prediction:
        name = runtime.name
        # The instances this request uses, taken now: a watchdog restart may replace them while
        # it waits, and it must then fail with 503, not trip over the swap.
        handler = runtime.handlers[0]
        started = time.monotonic()
        with self._tracer.start_as_current_span("decode"):
            item = await self._in_pool(_prepare, handler, data, self.limits)
        preprocess_s = time.monotonic() - started
        self.metrics.preprocess_duration.labels(name).observe(preprocess_s)
        self._check_ready(runtime)
        assert runtime.batcher is not None  # ready implies a running batcher
        request_span = trace.get_current_span().get_span_context()
        enqueued_ns = time.time_ns()
        future = runtime.batcher.submit(
            item, deadline=deadline, request_id=request_id, span_context=request_span
        )
        remaining = deadline - time.monotonic()
        try:
            result: BatchResult[Any] = await asyncio.wait_for(future, timeout=max(remaining, 0.0))
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within the request deadline ({name})") from None
        self._record_batch_spans(enqueued_ns, result)
        config = runtime.config
        body = handler.postprocess(result.output, top_k=top_k or config.top_k)
        return Prediction(
            model=name,
            model_version=config.version,
            body=body,
            preprocess_s=preprocess_s,
            queue_s=result.queue_s,
            inference_s=result.inference_s,
            batch_size=result.batch_size,
        )


def _prepare(handler: ModelHandler[Any, Any], data: bytes, limits: ImageLimits) -> Any:
    """Decode and pre-process one request with ``handler`` (worker pool thread)."""
    image = decode_image(data, limits, min_side=handler.decode_min_side())
    return handler.preprocess(image)


def _canary(handler: ModelHandler[Any, Any]) -> None:
    """One inference through preprocess and predict; readiness waits for it to succeed."""
    side = max(handler.decode_min_side() or 64, 32)
    image = Image.new("RGB", (side, side), (127, 127, 127))
    outputs = handler.predict([handler.preprocess(image)])
    if len(outputs) != 1:
        raise ModelLoadError(f"canary inference returned {len(outputs)} outputs for 1 input")
    if isinstance(outputs[0], BaseException):
        raise ModelLoadError(f"canary inference failed: {type(outputs[0]).__name__}: {outputs[0]}")
