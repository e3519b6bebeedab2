"""One served model's moving parts: spec, instances, batchers, state, and the label cache.

A model answers through one or two batchers that share its instance threads: ``image`` for
everything that starts from a picture, and ``text`` for models with a text tower (CLIP, FLAVA),
so text and image inputs batch separately but never run two forward passes on one instance
at once.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry import trace
from PIL import Image

from inference_engine.answers import Modality
from inference_engine.batching import BatchPolicy, DynamicBatcher, ModelWorker
from inference_engine.errors import ModelLoadError, ModelNotReady
from inference_engine.labelcache import LabelEmbeddingCache
from inference_engine.metrics import Metrics
from inference_engine.models.base import Capabilities, ModelConfig, ModelHandler
from inference_engine.models.loader import HandlerClass, ModelSpec
from inference_engine.reuse import Reuse
from inference_engine.stats import ModelStatistics

logger = logging.getLogger("inference_engine.runtime")

# How long release() waits for one instance's unload. The unload queues behind whatever its
# thread is running, and a hung forward pass may never end: past this bound the thread is
# abandoned, so shutdown takes at most the drain timeout plus this, whatever a model does.
UNLOAD_TIMEOUT_S = 2.0


class ModelState(enum.StrEnum):
    PENDING = "pending"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    RECOVERING = "recovering"
    STOPPED = "stopped"


@dataclass(eq=False)  # compared and hashed by identity: one runtime per loaded version
class ModelRuntime:
    """One served model: its spec, instances, batchers, and what happened while loading."""

    name: str
    spec: ModelSpec | None
    state: ModelState = ModelState.PENDING
    error: str | None = None
    handlers: list[ModelHandler[Any, Any]] = field(default_factory=list)
    workers: list[ModelWorker] = field(default_factory=list)
    batchers: dict[Modality, DynamicBatcher[Any, Any]] = field(default_factory=dict)
    label_cache: LabelEmbeddingCache | None = None
    reuse: Reuse | None = None  # the output cache and in-flight merging, when ``cache`` asks
    # Settled at load: the handler's own copy of the configuration (pre-processing read from a
    # folder) and what the loaded instance offers. Kept across restarts until the next load.
    settled: ModelConfig | None = None
    capabilities: Capabilities | None = None
    stats: ModelStatistics = field(default_factory=ModelStatistics)
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    restarts: int = 0
    # Reloads after a restart that failed in a row, and when the last one ended (the watchdog
    # retries with backoff from there).
    failed_recoveries: int = 0
    last_recovery_at: float = 0.0
    version: str = "1"
    # Requests that chose this version and have not answered yet: a retired version is
    # released only once they have (see InferenceService.retire).
    active: int = 0
    quiet: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever ``active`` drops to 0
    # Taken out of routing by a load or unload; finishing what it accepted before release.
    retiring: bool = False

    @property
    def labels(self) -> tuple[str, str]:
        """This version's metric labels: ``(model, version)``."""
        return self.name, self.version

    @property
    def alive(self) -> bool:
        """Every batch loop of this model runs."""
        return bool(self.batchers) and all(b.alive for b in self.batchers.values())

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY and self.alive

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
        """The configuration in force: as the handler settled it once loaded, else the folder's."""
        if self.settled is not None:
            return self.settled
        if self.spec is None:
            raise ModelNotReady(f"model {self.name} is not ready: {self.not_ready_reason()}")
        return self.spec.config

    def _fall_back(self, exc: ModelLoadError) -> HandlerClass:
        """``backend: auto``: the fast path failed to load; say why, and serve the fallback."""
        assert self.spec is not None
        assert self.spec.fallback is not None
        logger.warning(
            "ONNX Runtime path unavailable; serving on torch",
            extra={"model": self.name, "version": self.version, "reason": str(exc)},
        )
        return self.spec.fallback

    def policy(self) -> BatchPolicy:
        config = self.config
        return BatchPolicy(
            config.max_batch_size,
            config.max_batch_delay_ms,
            config.max_queue_size,
            config.batch_delay,
            config.admission,
        )

    async def load(self, metrics: Metrics, tracer: trace.Tracer) -> None:
        """Build the instances on their own threads, warm them, run the canary, start batching.

        Never raises: a failure leaves the model FAILED with the reason readiness reports.
        """
        assert self.spec is not None
        config = self.spec.config
        self.state = ModelState.LOADING
        started = time.monotonic()
        try:
            handler_class = self.spec.handler_class
            for index in range(config.instances):
                worker = ModelWorker(f"model-{self.name}-v{self.version}-{index}")
                self.workers.append(worker)
                handler = handler_class(config, self.spec.directory)
                try:
                    await worker.call(handler.load, config.device)
                except ModelLoadError as exc:
                    if index or self.spec.fallback is None:
                        raise
                    handler_class = self._fall_back(exc)
                    handler = handler_class(config, self.spec.directory)
                    await worker.call(handler.load, config.device)
                if handler.config.backend == "auto":  # settled: the runtime that actually serves
                    settled = {"backend": handler_class.runtime_backend}
                    handler.config = handler.config.model_copy(update=settled)
                self.handlers.append(handler)
            self.load_seconds = time.monotonic() - started
            warm_started = time.monotonic()
            await asyncio.gather(
                *(w.call(h.warmup) for w, h in zip(self.workers, self.handlers, strict=True))
            )
            self.warmup_seconds = time.monotonic() - warm_started
            await asyncio.gather(
                *(w.call(_canary, h) for w, h in zip(self.workers, self.handlers, strict=True))
            )
            timings = await self.workers[0].call(_calibrate, self.handlers[0])
        except Exception as exc:
            message = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            self.state, self.error = ModelState.FAILED, message
            metrics.model_load_failures.labels(*self.labels).inc()
            metrics.model_ready.labels(*self.labels).set(0)
            logger.error(
                "model failed to load",
                exc_info=not isinstance(exc, ModelLoadError),
                extra={"model": self.name, "error": message},
            )
            await self.release()
            return
        # What loading left on the heap (the framework, the weights' Python objects) lives as long
        # as the model: frozen, a full collection no longer walks it on every pass. On a 2-core
        # machine under load those collections paused the event loop for up to 140 ms (tails);
        # release() unfreezes, so what an unloaded model leaves behind can still be collected.
        gc.freeze()
        self.settled = self.handlers[0].config
        self.capabilities = self.handlers[0].capabilities()
        self._start_batchers(metrics, tracer, self.capabilities)
        for size, seconds in timings.items():  # admission predicts from the first request on
            self.batchers["image"].forward.observe(size, seconds)
        self.state = ModelState.READY
        metrics.model_load_seconds.labels(*self.labels).set(self.load_seconds)
        metrics.model_warmup_seconds.labels(*self.labels).set(self.warmup_seconds)
        metrics.model_ready.labels(*self.labels).set(1)
        logger.info(
            "model ready",
            extra={"model": self.name, "version": self.version, "load_ms": round(self.load_seconds * 1000, 1),
                   "warmup_ms": round(self.warmup_seconds * 1000, 1), "instances": config.instances},
        )  # fmt: skip

    async def restart(self, reason: str, kind: str, metrics: Metrics, tracer: trace.Tracer) -> None:
        """Take the model out of service at once, fail its work with 503, and reload it.

        A hung forward pass cannot be interrupted from Python: its worker thread is abandoned
        (a daemon, it ends when the pass returns, if ever; nothing queued behind it runs) and new
        instances take over.
        """
        self.state, self.error = ModelState.RECOVERING, reason
        self.restarts += 1
        metrics.model_ready.labels(*self.labels).set(0)
        metrics.watchdog_restarts.labels(*self.labels, kind).inc()
        logger.error("model unhealthy; restarting it", extra={"model": self.name, "reason": reason})
        error = ModelNotReady(f"model {self.name} is restarting: {reason}", retry_after_s=5.0)
        for batcher in self.batchers.values():
            batcher.abort(error)
        self.batchers.clear()
        for worker in self.workers:
            worker.abandon(error)
        self.workers.clear()
        self.handlers.clear()
        await self.reload(metrics, tracer)

    async def reload(self, metrics: Metrics, tracer: trace.Tracer) -> None:
        """Load again after a restart, counting the failures in a row (the watchdog's backoff)."""
        if self.failed_recoveries:
            logger.warning(
                "retrying the reload of a model",
                extra={"model": self.name, "attempt": self.failed_recoveries + 1, "error": self.error},
            )
        await self.load(metrics, tracer)
        self.last_recovery_at = time.monotonic()
        if self.state is ModelState.READY:
            self.failed_recoveries = 0
        else:
            self.failed_recoveries += 1
            logger.error(
                "model reload failed",
                extra={"model": self.name, "failed_in_a_row": self.failed_recoveries, "error": self.error},
            )
        metrics.failed_recoveries.labels(*self.labels).set(self.failed_recoveries)

    def _start_batchers(self, metrics: Metrics, tracer: trace.Tracer, offered: Capabilities) -> None:
        """An image batcher for every model; a text batcher on the same threads for text towers."""

        def batcher(label: str, forwards: list[Any]) -> DynamicBatcher[Any, Any]:
            runs = list(zip(self.workers, forwards, strict=True))
            return DynamicBatcher(
                label, self.policy(), runs, metrics, tracer, on_batch=self.stats.record_batch, eager=True,
                version=self.version,
            )  # fmt: skip

        self.batchers["image"] = batcher(self.name, [h.predict for h in self.handlers])
        if offered.text_encoder is not None:
            encoders = [h.capabilities().text_encoder for h in self.handlers]
            # Its own metric label, so queue depth and batch sizes of the two kinds stay apart.
            self.batchers["text"] = batcher(f"{self.name}:text", [e.predict_text for e in encoders if e])
        if offered.zero_shot is not None and self.label_cache is None:
            # Kept across watchdog restarts: the same weights give the same label embeddings.
            self.label_cache = LabelEmbeddingCache(self.labels, self.config.label_cache_size, metrics)
        cache = self.config.cache
        if (cache.enabled or cache.merge_in_flight) and self.reuse is None:
            self.reuse = Reuse(cache, self.labels, metrics)  # kept across restarts, as the labels'
        for each in self.batchers.values():
            each.start()

    async def release(self, timeout_s: float = UNLOAD_TIMEOUT_S) -> None:
        """Unload every instance on its own thread and end the threads, in ``timeout_s`` at most.

        The instances unload at once, each on its own thread, so the bound holds for the model
        however many instances it has. A thread still busy when its time is up (a forward pass
        that never returns) is abandoned, its calls failed, rather than waited for.
        """
        pairs = list(zip(self.workers, self.handlers, strict=False))
        gc.unfreeze()  # its objects may be garbage from now on; the next load freezes again
        await asyncio.gather(*(self._unload(worker, handler, timeout_s) for worker, handler in pairs))
        for worker in self.workers:
            worker.close()
        self.workers.clear()
        self.handlers.clear()

    async def _unload(self, worker: ModelWorker, handler: ModelHandler[Any, Any], timeout_s: float) -> None:
        bound = asyncio.timeout(timeout_s)
        try:
            async with bound:
                await worker.call(handler.unload)
        except Exception:
            if not bound.expired():  # unload itself failed (even with a TimeoutError of its own)
                logger.exception("unload failed", extra={"model": self.name})
                return
            busy_s = worker.busy_for
            worker.abandon(ModelNotReady(f"model {self.name} was released while its thread was busy"))
            logger.error(
                "model thread still busy at unload; abandoned it without unloading",
                extra={"model": self.name, "worker": worker.name, "busy_s": round(busy_s, 1)},
            )


def _calibrate(handler: ModelHandler[Any, Any]) -> dict[int, float]:
    """Seconds of one warm forward pass at batch 1 and at the largest batch (warm-up ran first):
    what predictive admission starts from, before the batch loop has measured anything."""
    side = max(handler.decode_min_side() or 64, 32)
    item = handler.preprocess(Image.new("RGB", (side, side), (127, 127, 127)))
    timings: dict[int, float] = {}
    for size in sorted({1, handler.config.max_batch_size}):
        started = time.perf_counter()
        handler.predict([item] * size)
        timings[size] = time.perf_counter() - started
    return timings


def _canary(handler: ModelHandler[Any, Any]) -> None:
    """One inference through preprocess and predict; readiness waits for it to succeed."""
    side = max(handler.decode_min_side() or 64, 32)
    image = Image.new("RGB", (side, side), (127, 127, 127))
    outputs = handler.predict([handler.preprocess(image)])
    if len(outputs) != 1:
        raise ModelLoadError(f"canary inference returned {len(outputs)} outputs for 1 input")
    if isinstance(outputs[0], BaseException):
        raise ModelLoadError(f"canary inference failed: {type(outputs[0]).__name__}: {outputs[0]}")
    offered = handler.capabilities()
    labels = handler.labels()
    if offered.classify and labels:
        # A labels file that does not fit the network fails here, once, with the reason, rather
        # than every request later (outputs are checked against the labels as they are answered).
        classes = int(np.size(handler.scores(outputs[0])))
        if classes != len(labels):
            raise ModelLoadError(
                f"the model answers {classes} class probabilities but has {len(labels)} labels; "
                "fix labels in model.yaml (or the labels file) to name every class"
            )
    encoder = offered.text_encoder
    if encoder is not None:
        (text,) = encoder.predict_text([encoder.preprocess_text(["a photo"])])
        if isinstance(text, BaseException):
            raise ModelLoadError(f"canary text inference failed: {type(text).__name__}: {text}")
