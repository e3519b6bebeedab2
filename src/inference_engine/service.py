"""The data plane: the one interface every transport calls. No HTTP or gRPC types here.

:class:`InferenceService` owns the models (each a :class:`ModelRuntime`), the worker pool that
decodes images, and start-up / shutdown. A transport asks it for everything (readiness, model
metadata and state, statistics, predictions, embeddings and output rows) and gets typed values
from :mod:`inference_engine.answers` back; it never touches a handler, a runtime or a batcher.
Which version serves a request and whether a model can answer it are decided here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from opentelemetry import trace

from inference_engine.answers import (
    Embeddings,
    Modality,
    OutputName,
    Prediction,
    Route,
    Rows,
    TextLimits,
    Vector,
)
from inference_engine.control import ModelControl, ModelRepository
from inference_engine.errors import (
    DeadlineExceeded,
    InvalidInput,
)
from inference_engine.imaging import ImageLimits
from inference_engine.metrics import Metrics
from inference_engine.models.base import Embedding, ModelHandler
from inference_engine.models.capabilities import ZeroShot
from inference_engine.models.loader import BrokenModel, ModelSpec
from inference_engine.outputs import (
    check_outputs,
    default_outputs,
    known_outputs,
    output_tensor,
    tensor_items,
)
from inference_engine.pipeline import InputPipeline, InputRun, Prepared, both, gather_or_cancel
from inference_engine.registry import ModelRegistry
from inference_engine.routing import ServedModel
from inference_engine.runtime import ModelRuntime, ModelState
from inference_engine.shadow import ShadowTraffic
from inference_engine.tenancy import DEFAULT_CALLER, Caller

__all__ = ["Embeddings", "InferenceService", "ModelRuntime", "ModelState", "Prediction", "Rows", "TextLimits"]

logger = logging.getLogger("inference_engine.service")

#: The request id of label embeddings computed for the label cache (in batch log lines).
LABEL_WORK_ID = "label-cache"


class InferenceService(ModelRegistry):
    """Loads models, runs requests through them, and shuts them down cleanly.

    What is served and in which state (lookups, readiness, metadata, statistics, liveness) is
    :class:`~inference_engine.registry.ModelRegistry`'s; this class adds the lifecycle and the
    request path.
    """

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
        shared_work_timeout_s: float = 120.0,
        recovery_limit: int = 3,
        repository: ModelRepository | None = None,
        shadow_max_in_flight: int = 32,
    ) -> None:
        super().__init__(specs, broken, metrics, default_model=default_model, recovery_limit=recovery_limit)
        self.tracer = tracer or trace.NoOpTracer()
        self.limits = limits
        # Work shared by several requests (label embeddings) runs under this, not under theirs.
        self.shared_work_timeout_s = shared_work_timeout_s
        self.text_limits = text_limits or TextLimits()
        workers = preprocess_workers or (os.cpu_count() or 1)
        self.pipeline = InputPipeline(metrics, self.tracer, limits, workers, admit=self._check_ready)
        self._shutdown_started: float | None = None
        self._load_task: asyncio.Task[None] | None = None
        self.shadows = ShadowTraffic(self.run_rows, metrics, max_in_flight=shadow_max_in_flight)
        # Model control (load, unload, index) over the folder the models came from.
        self.control = ModelControl(self, repository)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading every model in the background; readiness reports progress."""
        for bad in (r for r in self.runtimes() if r.state is ModelState.FAILED):
            logger.error(
                "model failed validation",
                extra={"model": bad.name, "version": bad.version, "error": bad.error},
            )
        for model in (m for m in self.models.values() if m.error is not None):
            logger.error("model failed validation", extra={"model": model.name, "error": model.error})
        self._load_task = asyncio.create_task(self._load_all(), name="load-models")

    async def wait_loaded(self) -> None:
        """Wait until every model has finished loading (successfully or not)."""
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    async def _load_all(self) -> None:
        pending = [r for r in self.runtimes() if r.state is ModelState.PENDING]
        await asyncio.gather(*(r.load(self.metrics, self.tracer) for r in pending))
        await asyncio.to_thread(self.control.remember_loaded)

    async def restart(self, runtime: ModelRuntime, reason: str, kind: str) -> None:
        """Take a ready model out of service at once, fail its work with 503, and reload it."""
        if runtime.state is not ModelState.READY or self._draining:
            return
        await runtime.restart(reason, kind, self.metrics, self.tracer)

    async def retry_recovery(self, runtime: ModelRuntime) -> None:
        """Reload a model whose reload after a restart failed (the watchdog calls it, with backoff).

        A model that failed its first load is left alone: its folder or weights are wrong, and
        loading them again would fail the same way.
        """
        if runtime.state is not ModelState.FAILED or runtime.failed_recoveries == 0 or self._draining:
            return
        await runtime.reload(self.metrics, self.tracer)

    def begin_shutdown(self) -> None:
        """Refuse new work from now on (``/ready`` turns 503); queued work still runs.

        Called from the signal handler, before the HTTP server stops accepting connections.
        """
        if self._shutdown_started is None:
            self._shutdown_started = time.monotonic()
        self._draining = True

    def drain_time_left(self, drain_timeout_s: float) -> float:
        """What is left of the one drain budget, counted from :meth:`begin_shutdown` (which this
        calls, if nothing has yet): the HTTP drain, the other transports' and this one share it."""
        self.begin_shutdown()
        assert self._shutdown_started is not None
        return max(0.0, drain_timeout_s - (time.monotonic() - self._shutdown_started))

    async def stop(self, drain_timeout_s: float) -> None:
        """Refuse new work, finish queued work, then unload every model.

        ``drain_timeout_s`` counts from :meth:`begin_shutdown` when that was called, so the
        HTTP server's wait for in-flight requests and this drain share one budget. It returns
        within that budget plus ``UNLOAD_TIMEOUT_S`` whatever a model thread does: the models
        unload at once, each bounded, and a thread still stuck in a forward pass is abandoned.
        """
        drain_timeout_s = self.drain_time_left(drain_timeout_s)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            await asyncio.gather(self._load_task, return_exceptions=True)
        await self.control.stop()
        await self.shadows.stop()
        runtimes = self.runtimes()
        batchers = [b for r in runtimes for b in r.batchers.values()]
        await asyncio.gather(*(b.drain(drain_timeout_s) for b in batchers))
        for runtime in runtimes:
            if runtime.state is ModelState.READY:
                runtime.state = ModelState.STOPPED
                self.metrics.model_ready.labels(*runtime.labels).set(0)
        await asyncio.gather(*(runtime.release() for runtime in runtimes))
        self.pipeline.shutdown()

    # -- the request path ------------------------------------------------------------------

    async def infer(
        self,
        target: Route | str,
        data: bytes,
        *,
        top_k: int | None,
        deadline: float,
        request_id: str = "-",
        labels: Sequence[str] | None = None,
        caller: Caller = DEFAULT_CALLER,
    ) -> Prediction:
        """Classify one encoded image with the model and version ``target`` routes to (a model
        name: a version by its traffic weights): with its own labels, or zero-shot ones.

        ``caller``: the request's tenant and priority (its place in the fair queue). Raises an
        ``EngineError`` on any failure. What the model returned is checked before it
        becomes an answer (its probabilities, or for zero-shot the embeddings ranked): NaN, infinity
        or a length other than the model declares fails this request with 500 ``model_failed``.
        """
        route, model, runtime = self._target(target)
        name = route.model
        offered = self._check_ready(runtime)
        # The instances this request uses, taken now: a watchdog restart may replace them while
        # it waits, and it must then fail with 503, not trip over the swap.
        handler = runtime.handlers[0]
        ranker: ZeroShot | None = None
        if labels is not None:
            ranker = offered.requiring_zero_shot(name)
            labels = self.text_limits.check_labels(labels)
        else:
            offered.require("classify", name)
        top_k = top_k or runtime.config.top_k
        with self._accounted(runtime):
            if ranker is None or labels is None:
                run = await self.pipeline.image(runtime, handler, data, deadline, request_id, caller)
                scores = output_tensor(handler, offered, "image", "probabilities", [run.output], runtime.name)
                body = handler.postprocess(run.output, top_k=top_k)
                self._mirror(model, route, handler, {"probabilities": scores}, images=[data], runs=[run])
            else:
                run, label_embeddings = await both(
                    self.pipeline.image(runtime, handler, data, deadline, request_id, caller),
                    self._label_embeddings(runtime, ranker, labels, deadline),
                )
                # Both sides of the ranking are model outputs: the image's embedding, and the
                # labels' from the text tower (through the label cache).
                if offered.image_embedder is not None:
                    embedded = output_tensor(
                        handler, offered, "image", "embeddings", [run.output], runtime.name
                    )
                    self._mirror(model, route, handler, {"embeddings": embedded}, images=[data], runs=[run])
                output_tensor(handler, offered, "text", "embeddings", list(label_embeddings), runtime.name)
                body = ranker.rank_labels(run.output, label_embeddings, labels, top_k=top_k)
        return Prediction(
            model=name,
            model_version=runtime.version,
            body=body,
            preprocess_s=run.preprocess_s,
            queue_s=run.queue_s,
            inference_s=run.inference_s,
            batch_size=run.batch_size,
            cached=_cached(runtime, [run]),
        )

    async def embed(
        self,
        target: Route | str,
        *,
        images: Sequence[bytes] = (),
        texts: Sequence[str] = (),
        deadline: float,
        request_id: str = "-",
        caller: Caller = DEFAULT_CALLER,
    ) -> Embeddings:
        """L2-normalised embeddings of several images or several texts (not both)."""
        rows = await self.run_rows(
            target,
            images=images,
            texts=texts,
            deadline=deadline,
            request_id=request_id,
            outputs=["embeddings"],
            caller=caller,
        )
        return Embeddings(
            model=rows.model,
            model_version=rows.model_version,
            modality=rows.modality,
            vectors=list(rows.tensors["embeddings"]),
            preprocess_s=rows.preprocess_s,
            queue_s=rows.queue_s,
            inference_s=rows.inference_s,
            batch_sizes=rows.batch_sizes,
            cached=rows.cached,
        )

    async def run_rows(
        self,
        target: Route | str,
        *,
        images: Sequence[bytes] = (),
        tensors: Sequence[npt.NDArray[np.float32]] = (),
        texts: Sequence[str] = (),
        deadline: float,
        request_id: str = "-",
        outputs: Sequence[str] | None = None,
        prepared: Prepared | None = None,
        caller: Caller = DEFAULT_CALLER,
    ) -> Rows:
        """The output tensors for several inputs of one kind, in order (the V2 protocol's rows).

        ``outputs`` names the tensors wanted (``None``: what the model answers for this kind of
        input); everything is checked before any input is queued. Each input is queued on its
        own, so a request's rows batch with everybody else's and a 4-row request may share one
        forward pass with three single-image requests. ``prepared``: the ``images`` decoded and
        pre-processed already (by another version of the model); used when this version would
        prepare them the same way, which spares a shadow copy the decoding.
        """
        kinds = [kind for kind in (images, tensors, texts) if kind]
        if len(kinds) != 1:
            raise InvalidInput("give images, tensors or texts (one kind per request)")
        count = len(kinds[0])
        if count > self.text_limits.max_items:
            raise InvalidInput(f"{count} inputs in one request; the limit is {self.text_limits.max_items}")
        wanted = known_outputs(outputs)
        route, model, runtime = self._target(target)
        name = route.model
        offered = self._check_ready(runtime)
        handler = runtime.handlers[0]
        modality: Modality = "text" if texts else "image"
        encoder = offered.requiring_text_encoder(name) if texts else None
        checker = offered.requiring_tensor_input(name) if tensors else None
        wanted = wanted or default_outputs(offered, modality)
        check_outputs(offered, modality, wanted, name)
        pipeline = self.pipeline

        def queued(item: Any) -> Awaitable[InputRun]:  # an input prepared already
            return pipeline.submit(runtime, "image", item, 0.0, deadline, request_id, caller)

        with self._accounted(runtime):
            if images and prepared is not None and prepared.fits(handler):
                work = [queued(item) for item in prepared.items]
            elif images:
                work = [pipeline.image(runtime, handler, d, deadline, request_id, caller) for d in images]
            elif checker is not None:
                size = sum(row.nbytes for row in tensors)
                items = await pipeline.in_pool_if(size, tensor_items, checker, tensors)
                work = [queued(item) for item in items]
            else:
                assert encoder is not None
                checked = [self.text_limits.check_text(text, "text") for text in texts]
                work = [pipeline.text(runtime, encoder, [t], deadline, request_id, caller) for t in checked]
            runs = await gather_or_cancel(*work)
            # Built inside the accounting: a refused output (500 model_failed) counts as a failure.
            raw = [run.output for run in runs]
            built = {o: output_tensor(handler, offered, modality, o, raw, runtime.name) for o in wanted}
        self._mirror(model, route, handler, built, images=images, runs=runs, tensors=tensors, texts=texts)
        return Rows(
            model=name,
            model_version=runtime.version,
            modality=modality,
            tensors=built,
            labels=handler.labels(),
            preprocess_s=max(run.preprocess_s for run in runs),
            queue_s=max(run.queue_s for run in runs),
            inference_s=max(run.inference_s for run in runs),
            batch_sizes=[run.batch_size for run in runs],
            cached=_cached(runtime, runs) if images else None,
        )

    def _mirror(
        self,
        model: ServedModel,
        route: Route,
        handler: ModelHandler[Any, Any],
        outputs: Mapping[OutputName, Vector],
        *,
        images: Sequence[bytes] = (),
        runs: Sequence[InputRun] = (),
        tensors: Sequence[npt.NDArray[np.float32]] = (),
        texts: Sequence[str] = (),
    ) -> None:
        """Copy a routed request to the model's shadow versions; images with the inputs this
        version prepared, which a shadow of the same network queues without decoding."""
        if not (route.routed and model.plan.shadow):
            return
        inputs: dict[str, Any] = {"tensors": tensors} if tensors else {"texts": texts}
        if images:
            inputs = {"images": images, "prepared": Prepared(handler, [run.item for run in runs])}
        self.shadows.offer(model, route, inputs, outputs)

    def _target(self, target: Route | str) -> tuple[Route, ServedModel, ModelRuntime]:
        """The route, model and runtime of a request (routed now when given a model name)."""
        route = target if isinstance(target, Route) else self.route(target)
        model = self.served(route.model)
        return route, model, model.runtime_for(route)

    @contextlib.contextmanager
    def _accounted(self, runtime: ModelRuntime) -> Iterator[None]:
        """Count the request as in flight (for the version's retirement too), and its outcome
        in the version's statistics. Entered right after routing, with no ``await`` between."""
        started = time.monotonic()
        ok = False
        runtime.active += 1
        runtime.quiet.clear()
        try:
            with self.metrics.in_flight.labels(*runtime.labels).track_inprogress():
                yield
            ok = True
        finally:
            runtime.active -= 1
            if not runtime.active:
                runtime.quiet.set()
            runtime.stats.record_request(time.monotonic() - started, ok)

    async def _label_embeddings(
        self, runtime: ModelRuntime, ranker: ZeroShot, labels: list[str], deadline: float
    ) -> Embedding:
        """The labels' embeddings, computed once for every request that misses on them at once.

        The shared computation runs under its own deadline (``shared_work_timeout_s``), not the
        deadline of whichever request started it; this request waits only until its own.
        """

        async def compute(label: str) -> Embedding:
            shared_deadline = time.monotonic() + self.shared_work_timeout_s
            prompts = ranker.label_prompts(label)
            run = await self.pipeline.text(runtime, ranker, prompts, shared_deadline, LABEL_WORK_ID)
            embedding: Embedding = run.output
            return embedding

        assert runtime.label_cache is not None  # zero-shot models get one when they start
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                return await runtime.label_cache.embeddings(labels, compute)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within the request deadline ({runtime.name})") from None


def _cached(runtime: ModelRuntime, runs: Sequence[InputRun]) -> bool | None:
    """Whether every input was answered from the output cache; ``None`` where there is none."""
    if runtime.reuse is None or runtime.reuse.cache is None:
        return None
    return all(run.cached for run in runs)
