"""The data plane: decode -> submit -> await -> format. No HTTP types here.

:class:`InferenceService` owns the models (each a :class:`ModelRuntime`), the worker pool that
decodes images, and start-up / shutdown. Any transport (REST today, others later) calls
:meth:`InferenceService.infer` and formats what it gets back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from opentelemetry import trace

from inference_engine.answers import Embeddings, InputRun, Prediction, Rows, TextLimits
from inference_engine.batching import BatchResult
from inference_engine.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ShuttingDown,
)
from inference_engine.imaging import ImageLimits, decode_image
from inference_engine.metrics import Metrics
from inference_engine.models.base import Embedding, ModelHandler, Task
from inference_engine.models.loader import BrokenModel, ModelSpec
from inference_engine.runtime import Modality, ModelRuntime, ModelState

__all__ = ["Embeddings", "InferenceService", "ModelRuntime", "ModelState", "Prediction", "Rows", "TextLimits"]

logger = logging.getLogger("inference_engine.service")

R = TypeVar("R")
A = TypeVar("A")
B = TypeVar("B")


class InferenceService:
    """Loads models, runs requests through them, and shuts them down cleanly."""

    def __init__(
        self,
        specs: list[ModelSpec],
        broken: list[BrokenModel],
        metrics: Metrics,
        *,
        limits: ImageLimits,
        text_limits: TextLimits | None = None,
        preprocess_workers: int = 0,
        default_model: str | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.metrics = metrics
        self._tracer = tracer or trace.NoOpTracer()
        self.limits = limits
        self.text_limits = text_limits or TextLimits()
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
        await asyncio.gather(*(r.load(self.metrics, self._tracer) for r in pending))

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
        for batcher in runtime.batchers.values():
            batcher.abort(ModelNotReady(f"model {runtime.name} is restarting: {reason}", retry_after_s=5.0))
        runtime.batchers.clear()
        for worker in runtime.workers:
            worker.close()
        runtime.workers.clear()
        runtime.handlers.clear()
        await runtime.load(self.metrics, self._tracer)

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
        batchers = [b for r in self.runtimes.values() for b in r.batchers.values()]
        await asyncio.gather(*(b.drain(drain_timeout_s) for b in batchers))
        for runtime in self.runtimes.values():
            if runtime.state is ModelState.READY:
                runtime.state = ModelState.STOPPED
                self.metrics.model_ready.labels(runtime.name).set(0)
            await runtime.release()
        self._pool.shutdown(wait=False, cancel_futures=True)

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
        self,
        name: str,
        data: bytes,
        *,
        top_k: int | None,
        deadline: float,
        request_id: str = "-",
        labels: Sequence[str] | None = None,
    ) -> Prediction:
        """Classify one encoded image with model ``name``: with its own labels, or zero-shot ones.

        Raises an ``EngineError`` on any failure.
        """
        runtime = self.runtime(name)
        self._check_ready(runtime)
        # The instances this request uses, taken now: a watchdog restart may replace them while
        # it waits, and it must then fail with 503, not trip over the swap.
        handler = runtime.handlers[0]
        if labels is not None:
            self._require(handler, "zero_shot")
            labels = self.text_limits.check_labels(labels)
        else:
            self._require(handler, "classify")
        top_k = top_k or runtime.config.top_k
        with self._accounted(runtime):
            if labels is None:
                run = await self._run_image(runtime, handler, data, deadline, request_id)
                body = handler.postprocess(run.output, top_k=top_k)
            else:
                run, label_embeddings = await _both(
                    self._run_image(runtime, handler, data, deadline, request_id),
                    self._label_embeddings(runtime, handler, labels, deadline, request_id),
                )
                body = handler.rank_labels(run.output, label_embeddings, labels, top_k=top_k)
        return Prediction(
            model=name,
            model_version=runtime.config.version,
            body=body,
            preprocess_s=run.preprocess_s,
            queue_s=run.queue_s,
            inference_s=run.inference_s,
            batch_size=run.batch_size,
        )

    async def embed(
        self,
        name: str,
        *,
        images: Sequence[bytes] = (),
        texts: Sequence[str] = (),
        deadline: float,
        request_id: str = "-",
    ) -> Embeddings:
        """L2-normalised embeddings of several images or several texts (not both)."""
        rows = await self.run_rows(
            name, images=images, texts=texts, deadline=deadline, request_id=request_id, task="embed"
        )
        vectors = [rows.handler.embed(o) for o in rows.outputs] if images else list(rows.outputs)
        return Embeddings(
            model=name,
            model_version=rows.model_version,
            modality=rows.modality,
            vectors=vectors,
            preprocess_s=rows.preprocess_s,
            queue_s=rows.queue_s,
            inference_s=rows.inference_s,
            batch_sizes=rows.batch_sizes,
        )

    async def run_rows(
        self,
        name: str,
        *,
        images: Sequence[bytes] = (),
        tensors: Sequence[npt.NDArray[np.float32]] = (),
        texts: Sequence[str] = (),
        deadline: float,
        request_id: str = "-",
        task: Literal["classify", "embed", "any"] = "any",
    ) -> Rows:
        """Raw outputs for several inputs of one kind, in order (the V2 protocol's batch rows).

        Each input is queued on its own, so a request's rows batch with everybody else's and a
        4-row request may share one forward pass with three single-image requests.
        """
        kinds = [kind for kind in (images, tensors, texts) if kind]
        if len(kinds) != 1:
            raise InvalidInput("give images, tensors or texts (one kind per request)")
        count = len(kinds[0])
        if count > self.text_limits.max_items:
            raise InvalidInput(f"{count} inputs in one request; the limit is {self.text_limits.max_items}")
        runtime = self.runtime(name)
        self._check_ready(runtime)
        handler = runtime.handlers[0]
        modality: Modality = "text" if texts else "image"
        if texts:
            self._require(handler, "embed_text")
        elif task == "embed":
            self._require(handler, "embed_image")
        elif task == "classify":
            self._require(handler, "classify")
        with self._accounted(runtime):
            if images:
                work = [self._run_image(runtime, handler, d, deadline, request_id) for d in images]
            elif tensors:
                items = [handler.tensor_item(row) for row in tensors]
                work = [self._submit(runtime, "image", i, 0.0, deadline, request_id) for i in items]
            else:
                checked = [self.text_limits.check_text(text, "text") for text in texts]
                work = [self._run_text(runtime, handler, [t], deadline, request_id) for t in checked]
            runs = await _gather_or_cancel(*work)
        return Rows(
            model=name,
            model_version=runtime.config.version,
            modality=modality,
            handler=handler,
            outputs=[run.output for run in runs],
            preprocess_s=max(run.preprocess_s for run in runs),
            queue_s=max(run.queue_s for run in runs),
            inference_s=max(run.inference_s for run in runs),
            batch_sizes=[run.batch_size for run in runs],
        )

    @contextlib.contextmanager
    def _accounted(self, runtime: ModelRuntime) -> Iterator[None]:
        """Count the request as in flight, and its outcome in the model's statistics."""
        started = time.monotonic()
        ok = False
        try:
            with self.metrics.in_flight.labels(runtime.name).track_inprogress():
                yield
            ok = True
        finally:
            runtime.stats.record_request(time.monotonic() - started, ok)

    # -- input checks ------------------------------------------------------------------------

    def _check_ready(self, runtime: ModelRuntime) -> None:
        if self._draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if not runtime.ready:
            raise ModelNotReady(f"model {runtime.name} is not ready: {runtime.not_ready_reason()}")

    @staticmethod
    def _require(handler: ModelHandler[Any, Any], task: Task) -> None:
        if task not in handler.tasks():
            what = {
                "classify": "classification without labels (send 'labels' for zero-shot)",
                "zero_shot": "zero-shot labels",
                "embed_image": "image embeddings",
                "embed_text": "text embeddings",
            }[task]
            raise handler._unsupported(what)

    # -- running inputs through the batchers --------------------------------------------------

    async def _run_image(
        self, runtime: ModelRuntime, handler: ModelHandler[Any, Any], data: bytes, deadline: float,
        request_id: str,
    ) -> InputRun:  # fmt: skip
        started = time.monotonic()
        # Announced to the batcher while it decodes, so a forming batch waits for it (and only
        # while something is on its way); the announcement ends right before _submit queues it.
        with _announced(runtime, "image"), self._tracer.start_as_current_span("decode"):
            item = await self._in_pool(_prepare, handler, data, self.limits)
        preprocess_s = time.monotonic() - started
        self.metrics.preprocess_duration.labels(runtime.name).observe(preprocess_s)
        return await self._submit(runtime, "image", item, preprocess_s, deadline, request_id)

    async def _run_text(
        self, runtime: ModelRuntime, handler: ModelHandler[Any, Any], prompts: list[str], deadline: float,
        request_id: str,
    ) -> InputRun:  # fmt: skip
        started = time.monotonic()
        with _announced(runtime, "text"), self._tracer.start_as_current_span("tokenize"):
            item = await self._in_pool(handler.preprocess_text, prompts)
        preprocess_s = time.monotonic() - started
        return await self._submit(runtime, "text", item, preprocess_s, deadline, request_id)

    async def _label_embeddings(
        self, runtime: ModelRuntime, handler: ModelHandler[Any, Any], labels: list[str], deadline: float,
        request_id: str,
    ) -> Embedding:  # fmt: skip
        async def compute(label: str) -> Embedding:
            run = await self._run_text(runtime, handler, handler.label_prompts(label), deadline, request_id)
            embedding: Embedding = run.output
            return embedding

        assert runtime.label_cache is not None  # zero-shot models get one when they start
        return await runtime.label_cache.embeddings(labels, compute)

    async def _submit(
        self, runtime: ModelRuntime, modality: Modality, item: Any, preprocess_s: float, deadline: float,
        request_id: str,
    ) -> InputRun:  # fmt: skip
        self._check_ready(runtime)
        batcher = runtime.batchers[modality]  # ready implies running batchers
        request_span = trace.get_current_span().get_span_context()
        enqueued_ns = time.time_ns()
        future = batcher.submit(item, deadline=deadline, request_id=request_id, span_context=request_span)
        remaining = deadline - time.monotonic()
        try:
            result: BatchResult[Any] = await asyncio.wait_for(future, timeout=max(remaining, 0.0))
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within the request deadline ({runtime.name})") from None
        self._record_batch_spans(enqueued_ns, result)
        return InputRun(result.output, preprocess_s, result.queue_s, result.inference_s, result.batch_size)


def _announced(runtime: ModelRuntime, modality: Modality) -> contextlib.AbstractContextManager[None]:
    """The batcher's ``incoming()`` for one input being prepared (nothing while it is restarting)."""
    batcher = runtime.batchers.get(modality)
    return batcher.incoming() if batcher is not None else contextlib.nullcontext()


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Await two things concurrently; on the first failure cancel the other."""
    a, b = await _gather_or_cancel(first, second)
    return a, b


async def _gather_or_cancel(*work: Awaitable[Any]) -> list[Any]:
    """Await all of ``work`` in order; on the first failure cancel the rest (they would be wasted)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _prepare(handler: ModelHandler[Any, Any], data: bytes, limits: ImageLimits) -> Any:
    """Decode and pre-process one request with ``handler`` (worker pool thread)."""
    image = decode_image(data, limits, min_side=handler.decode_min_side())
    return handler.preprocess(image)
