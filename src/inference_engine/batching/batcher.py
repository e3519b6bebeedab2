"""The dynamic batcher: futures in, batched forward passes on model threads, results out.

One asyncio task per model instance takes batches from the shared queue and runs them on that
instance's :class:`ModelWorker`. Every accepted item's future is resolved exactly once: with
its output, with its own exception, with the batch's exception, or at shutdown. The loop
survives any model error; if it ever ends, :attr:`alive` turns false and readiness with it.

An item is always somewhere a stop can find it: in the queue (failed by :meth:`abort` and
:meth:`drain` from there), or held by one loop, in the batch it is forming or running (failed
by :meth:`abort` at once, and by the loop itself whenever it ends). Resolution is always
set-if-not-done, so the paths that race at a stop cannot resolve an item twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from opentelemetry import trace

from inference_engine.batching.admission import Admission, AdmissionMode
from inference_engine.batching.delay import BatchDelay, DelayMode
from inference_engine.batching.forward import ForwardTimes
from inference_engine.batching.queue import BatchQueue, WorkItem
from inference_engine.batching.worker import ModelWorker
from inference_engine.errors import (
    DeadlineExceeded,
    EngineError,
    ModelFailed,
    ModelNotReady,
    QueueFull,
    ShuttingDown,
)
from inference_engine.metrics import Metrics
from inference_engine.tenancy import DEFAULT_CALLER, Caller

ItemT = TypeVar("ItemT")
OutputT = TypeVar("OutputT")

PredictFn = Callable[[list[ItemT]], Sequence[OutputT | BaseException]]

logger = logging.getLogger("inference_engine.batcher")

_batch_ids = itertools.count(1)


@dataclass(frozen=True)
class BatchPolicy:
    """When a batch closes and how much may wait."""

    max_batch_size: int
    max_batch_delay_ms: float
    max_queue_size: int
    #: ``adaptive``: wait for more inputs only while the measurements say it pays (:mod:`.delay`).
    batch_delay: DelayMode = "fixed"
    #: ``predictive``: refuse an input its deadline cannot be met for (:mod:`.admission`).
    admission: AdmissionMode = "queue_only"


@dataclass(frozen=True)
class BatchResult(Generic[OutputT]):
    """One item's output and what it cost."""

    output: OutputT
    queue_s: float
    inference_s: float
    batch_size: int
    batch_id: int
    started_ns: int = 0  # when its forward pass began (``time.time_ns()``), for the trace's spans


def _set_result(item: WorkItem[Any], result: Any) -> None:
    if not item.future.done():
        item.future.set_result(result)


def _set_exception(item: WorkItem[Any], exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)


class DynamicBatcher(Generic[ItemT, OutputT]):
    """Batches items for one model across one or more instances."""

    def __init__(
        self,
        model: str,
        policy: BatchPolicy,
        instances: Sequence[tuple[ModelWorker, PredictFn[ItemT, OutputT]]],
        metrics: Metrics,
        tracer: trace.Tracer | None = None,
        on_batch: Callable[[int, float, list[float]], None] | None = None,
        eager: bool = False,
        version: str = "1",
    ) -> None:
        self.model = model
        self.version = version
        # eager: close a batch early when the queue is empty and no announced input is on its
        # way (see incoming()); otherwise a batch always waits out max_batch_delay_ms.
        self._eager = eager
        self._incoming = 0
        self._on_batch = on_batch  # (batch size, forward-pass seconds, each input's queue wait)
        self.policy = policy
        self._tracer = tracer or trace.NoOpTracer()
        self._instances = list(instances)
        self._metrics = metrics
        depth_gauge = metrics.queue_depth.labels(model, version)
        self._queue: BatchQueue[ItemT] = BatchQueue(policy.max_queue_size, depth_gauge.set)
        #: Forward time per batch size: the delay's and the admission forecast's measurements.
        self.forward = ForwardTimes()
        self.delay = BatchDelay(policy.max_batch_delay_ms / 1000.0, policy.batch_delay, self.forward)
        self.admission = Admission.build(
            model,
            version,
            policy.admission,
            self.forward,
            policy.max_batch_size,
            len(self._instances),
            metrics,
        )
        self._delay_gauge = metrics.batch_delay.labels(model, version)
        self._delay_gauge.set(self.delay.max_delay_s)
        self._tasks: list[asyncio.Task[None]] = []
        # Per loop, the items it has taken off the queue: the batch it forms or runs. Out of
        # the queue, they would be out of reach of a stop if nobody kept them here.
        self._held: dict[int, list[WorkItem[ItemT]]] = {}
        # Per loop running a forward pass now: (batch size, when it started).
        self._running: dict[int, tuple[int, float]] = {}
        self._last_done: dict[int, float] = {}  # per loop, when its last batch was answered
        self._accepting = False
        self._throughput = 0.0  # items per second, smoothed; feeds Retry-After
        self._progress = asyncio.Event()  # set whenever queued work is consumed (drain waits on it)
        self._abort_error: EngineError | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start one batch loop per instance."""
        self._accepting = True
        for index, (worker, predict) in enumerate(self._instances):
            loop = self._loop(index, worker, predict)
            task = asyncio.create_task(loop, name=f"batcher-{self.model}-{index}")
            task.add_done_callback(self._loop_ended)
            self._tasks.append(task)

    @property
    def waiting(self) -> int:
        """Inputs queued or being prepared for this batcher, not yet in a batch."""
        return len(self._queue) + self._incoming

    @property
    def alive(self) -> bool:
        """True while every batch loop runs."""
        return bool(self._tasks) and all(not t.done() for t in self._tasks)

    def _unanswered(self) -> int:
        """Accepted items still waiting for an answer: queued, or in a forming or running batch."""
        held = sum(1 for batch in self._held.values() for item in batch if not item.future.done())
        return len(self._queue) + held

    async def drain(self, timeout_s: float) -> None:
        """Refuse new items, let queued, forming and running ones finish (up to ``timeout_s``), then stop.

        Whatever has not finished by then fails with ``ShuttingDown``: the queue here, the
        batches the loops hold as the loops end. A forward pass still running is not waited for
        (its thread cannot be interrupted); the runtime bounds the wait for that thread.
        """
        self._accepting = False
        deadline = time.monotonic() + timeout_s
        while self._unanswered() and time.monotonic() < deadline:
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), deadline - time.monotonic())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for item in self._queue.drain_nowait():
            _set_exception(item, ShuttingDown("the server shut down before this request ran"))

    def abort(self, error: EngineError) -> None:
        """Stop now: fail everything queued, forming or running with ``error`` (watchdog).

        Every item is failed before this returns, not when the cancelled loops next run, so
        the restart that calls it can count on no request of this batcher waiting any more.
        """
        self._accepting = False
        self._abort_error = error
        for task in self._tasks:
            task.cancel()
        for item in self._queue.drain_nowait():
            _set_exception(item, error)
        for batch in self._held.values():
            for item in batch:
                _set_exception(item, error)

    # -- intake ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Announce one input being prepared (decoded, tokenised) for this batcher.

        Leave the block right before :meth:`submit`, with no ``await`` in between. While any
        input is announced a forming batch waits (up to the delay) for it; when none is, an
        eager batcher runs what it has at once, so a lone request does not pay the delay.
        """
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    def _pending_inputs(self) -> int:
        return self._incoming

    def check_room(
        self, count: int = 0, *, deadline: float | None = None, caller: Caller = DEFAULT_CALLER,
    ) -> None:  # fmt: skip
        """Refuse an input at once, before any work on it: 503 ``queue_full`` when the queue will
        not have room for it, 503 ``deadline_unmeetable`` when (with ``admission: predictive``)
        it would not be answered by ``deadline``.

        Inputs being prepared (announced by :meth:`incoming`) count as queued: they will be,
        and letting in more than the queue holds only moves the wait, and its decoding CPU,
        in front of the queue, where it slows the model down for the requests that do fit.
        ``count`` more inputs not yet announced are counted too. A tenant under its weighted
        share of the queue is let in even when it is full (see :class:`.BatchQueue`).
        """
        if not self._accepting:
            raise ShuttingDown(f"model {self.model} is not accepting requests (shutting down)")
        if not self._queue.has_room(caller.tenant, caller.weight, extra=self._incoming + count - 1):
            self.admission.queue_full()
            raise QueueFull(
                f"the queue is full ({self.policy.max_queue_size} requests waiting); retry shortly",
                retry_after_s=self.retry_after_s(),
            )
        if deadline is not None:
            self._predict(deadline, caller)

    def _predict(self, deadline: float, caller: Caller) -> float | None:
        """Admission's judgement of one more input of ``caller``: what is ahead of it in the fair
        queue, in batches still forming, and the passes running now."""
        if self.admission.mode != "predictive":
            return None
        now = time.monotonic()
        forming = sum(len(batch) for index, batch in self._held.items() if index not in self._running)
        ahead = self._queue.ahead_of(caller.tenant, caller.weight, caller.priority) + forming
        running = [(size, now - started) for size, started in self._running.values()]
        return self.admission.judge(deadline, ahead, running)

    def submit(
        self,
        payload: ItemT,
        *,
        deadline: float,
        request_id: str = "-",
        span_context: trace.SpanContext | None = None,
        caller: Caller = DEFAULT_CALLER,
    ) -> asyncio.Future[Any]:
        """Queue one item; the returned future resolves to a :class:`BatchResult`.

        Raises ``QueueFull`` at once when the queue is full, ``DeadlineUnmeetable`` when
        predictive admission finds it would miss ``deadline``, ``ShuttingDown`` while draining.
        """
        if not self._accepting:
            raise ShuttingDown(f"model {self.model} is not accepting requests (shutting down)")
        predicted_at = self._predict(deadline, caller)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        item = WorkItem(
            payload, future, deadline, request_id, span_context=span_context, tenant=caller.tenant,
            weight=caller.weight, priority=caller.priority, predicted_at=predicted_at,
        )  # fmt: skip
        try:
            self._queue.put(item, retry_after_s=self.retry_after_s())
        except QueueFull:
            self.admission.queue_full()
            raise
        self.delay.arrived(item.enqueued_at)
        return future

    def retry_after_s(self) -> float:
        """Seconds until the current backlog should have cleared, from recent throughput."""
        if self._throughput <= 0:
            return 1.0
        # Throughput is measured per forward pass; the instances run in parallel.
        return min(60.0, max(1.0, len(self._queue) / (self._throughput * len(self._instances))))

    def _admit(self, item: WorkItem[Any]) -> bool:
        self._progress.set()
        if item.future.done():  # cancelled: the client went away, or gave up at its deadline
            reason = "deadline" if time.monotonic() >= item.deadline else "cancelled"
            self._metrics.dropped.labels(self.model, self.version, reason).inc()
            return False
        if time.monotonic() >= item.deadline:
            self._metrics.dropped.labels(self.model, self.version, "deadline").inc()
            _set_exception(item, DeadlineExceeded("the request's deadline passed while it was queued"))
            return False
        return True

    # -- the loop --------------------------------------------------------------------------

    def _patience(self) -> float:
        """The adaptive wait for one more input, exported as it is chosen."""
        wait = self.delay.wait_s()
        self._delay_gauge.set(wait)
        return wait

    async def _loop(self, index: int, worker: ModelWorker, predict: PredictFn[ItemT, OutputT]) -> None:
        try:
            while True:
                # Filled in place, so the items are held from the moment they leave the queue.
                batch: list[WorkItem[ItemT]] = []
                self._held[index] = batch
                waiting_since = time.monotonic()
                await self._queue.next_batch(
                    self.policy.max_batch_size,
                    self.delay.max_delay_s,
                    self._admit,
                    self._pending_inputs if self._eager else None,
                    patience=self._patience if self.policy.batch_delay == "adaptive" else None,
                    into=batch,
                )
                self.delay.idled(max(0.0, batch[0].enqueued_at - waiting_since))
                started = time.monotonic()
                last_done = self._last_done.get(index)
                if last_done is not None and batch[0].enqueued_at < last_done:  # a backlog: no idling
                    self.admission.forecast.turned_around(started - last_done)
                self._running[index] = (len(batch), started)
                try:
                    await self._run_batch(worker, predict, batch)
                finally:
                    del self._running[index]
                    self._last_done[index] = time.monotonic()
                    self._progress.set()
        except BaseException as exc:  # cancelled (abort, drain) or a bug: leave no item behind
            error = self._stop_error(exc)
            for item in self._held.pop(index, []):
                _set_exception(item, error)
            raise

    def _stop_error(self, exc: BaseException) -> EngineError:
        """What the items a loop still holds fail with when it ends before answering them."""
        if self._abort_error is not None:
            return self._abort_error
        if isinstance(exc, asyncio.CancelledError):
            return ShuttingDown("the server shut down before this request ran")
        return ModelNotReady(
            f"model {self.model} stopped batching ({type(exc).__name__}); retry shortly", retry_after_s=5.0
        )

    async def _run_batch(
        self, worker: ModelWorker, predict: PredictFn[ItemT, OutputT], batch: list[WorkItem[ItemT]]
    ) -> None:
        links = [trace.Link(item.span_context) for item in batch if item.span_context is not None]
        with self._tracer.start_as_current_span("batch", links=links) as span:
            span.set_attribute("inference_engine.model", self.model)
            span.set_attribute("inference_engine.batch.size", len(batch))
            await self._run_traced_batch(worker, predict, batch, span)

    async def _run_traced_batch(
        self,
        worker: ModelWorker,
        predict: PredictFn[ItemT, OutputT],
        batch: list[WorkItem[ItemT]],
        span: trace.Span,
    ) -> None:
        batch_id = next(_batch_ids)
        span.set_attribute("inference_engine.batch.id", batch_id)
        started_ns = time.time_ns()
        started = time.monotonic()
        waits = [started - item.enqueued_at for item in batch]
        for wait in waits:
            self._metrics.queue_wait.labels(self.model, self.version).observe(wait)
        try:
            outputs = await worker.call(predict, [item.payload for item in batch])
            if len(outputs) != len(batch):
                raise ModelFailed(
                    f"predict returned {len(outputs)} outputs for a batch of {len(batch)} inputs"
                )
        except asyncio.CancelledError:
            error = self._abort_error or ShuttingDown("the server shut down while this request ran")
            for item in batch:
                _set_exception(item, error)
            raise
        except BaseException as exc:  # SystemExit from a model must not end the loop
            self._metrics.batch_failures.labels(self.model, self.version).inc()
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
            logger.exception(
                "batch failed",
                extra={"model": self.model, "batch_id": batch_id, "batch_size": len(batch),
                       "request_ids": [item.request_id for item in batch]},
            )  # fmt: skip
            failure = exc if isinstance(exc, EngineError) else ModelFailed(
                f"the model failed on this batch ({type(exc).__name__}); see the server log"
            )  # fmt: skip
            for item in batch:
                _set_exception(item, failure)
            return
        elapsed = time.monotonic() - started
        self.delay.ran(len(batch), elapsed)
        self._metrics.inference_duration.labels(self.model, self.version).observe(elapsed)
        self._metrics.batch_size.labels(self.model, self.version).observe(len(batch))
        if self._on_batch is not None:
            self._on_batch(len(batch), elapsed, waits)
        rate = len(batch) / elapsed if elapsed > 0 else 0.0
        self._throughput = rate if self._throughput == 0 else 0.8 * self._throughput + 0.2 * rate
        logger.info(
            "batch done",
            extra={"model": self.model, "batch_id": batch_id, "batch_size": len(batch),
                   "queue_wait_ms": round(max(waits) * 1000, 2), "inference_ms": round(elapsed * 1000, 2),
                   "request_ids": [item.request_id for item in batch]},
        )  # fmt: skip
        answered = time.monotonic()
        for item, wait, output in zip(batch, waits, outputs, strict=True):
            if isinstance(output, BaseException):
                _set_exception(item, self._item_failure(output, item))
            else:
                if item.predicted_at is not None:
                    self.admission.answered(item.predicted_at, answered)
                _set_result(item, BatchResult(output, wait, elapsed, len(batch), batch_id, started_ns))

    def _item_failure(self, exc: BaseException, item: WorkItem[Any]) -> BaseException:
        if isinstance(exc, EngineError):
            return exc
        logger.error(
            "model failed on one input",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"model": self.model, "request_id": item.request_id},
        )
        return ModelFailed(f"the model failed on this input ({type(exc).__name__}); see the server log")

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        logger.critical(
            "batch loop ended unexpectedly; model is no longer ready",
            exc_info=(type(exc), exc, exc.__traceback__) if exc else None,
            extra={"model": self.model},
        )
