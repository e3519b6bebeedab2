"""One served model's moving parts: spec, instances, batchers, state, and the label cache.

A model answers through one or two batchers that share its instance threads: ``image`` for
everything that starts from a picture, and ``text`` for models with a text tower (CLIP, FLAVA),
so text and image inputs batch separately but never run two forward passes on one instance
at once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry import trace
from PIL import Image

from inference_engine.batching import BatchPolicy, DynamicBatcher, ModelWorker
from inference_engine.errors import ModelLoadError, ModelNotReady
from inference_engine.labelcache import LabelEmbeddingCache
from inference_engine.metrics import Metrics
from inference_engine.models.base import ModelConfig, ModelHandler
from inference_engine.models.loader import ModelSpec
from inference_engine.stats import ModelStatistics

logger = logging.getLogger("inference_engine.service")

Modality = Literal["image", "text"]


class ModelState(enum.StrEnum):
    PENDING = "pending"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    RECOVERING = "recovering"
    STOPPED = "stopped"


@dataclass
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
    stats: ModelStatistics = field(default_factory=ModelStatistics)
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    restarts: int = 0

    @property
    def batcher(self) -> DynamicBatcher[Any, Any] | None:
        """The image batcher (every model has one once loaded)."""
        return self.batchers.get("image")

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
        if self.spec is None:
            raise ModelNotReady(f"model {self.name} is not ready: {self.not_ready_reason()}")
        return self.spec.config

    def policy(self) -> BatchPolicy:
        config = self.config
        assert config.max_batch_size is not None
        assert config.max_queue_size is not None
        return BatchPolicy(config.max_batch_size, config.max_batch_delay_ms or 0.0, config.max_queue_size)

    async def load(self, metrics: Metrics, tracer: trace.Tracer) -> None:
        """Build the instances on their own threads, warm them, run the canary, start batching.

        Never raises: a failure leaves the model FAILED with the reason readiness reports.
        """
        assert self.spec is not None
        config = self.spec.config
        self.state = ModelState.LOADING
        started = time.monotonic()
        try:
            for index in range(config.instances):
                worker = ModelWorker(f"model-{self.name}-{index}")
                self.workers.append(worker)
                handler = self.spec.handler_class(config, self.spec.directory)
                await worker.call(handler.load, config.device)
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
        except Exception as exc:
            message = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            self.state, self.error = ModelState.FAILED, message
            metrics.model_load_failures.labels(self.name).inc()
            metrics.model_ready.labels(self.name).set(0)
            logger.error(
                "model failed to load",
                exc_info=not isinstance(exc, ModelLoadError),
                extra={"model": self.name, "error": message},
            )
            await self.release()
            return
        self._start_batchers(metrics, tracer)
        self.state = ModelState.READY
        metrics.model_load_seconds.labels(self.name).set(self.load_seconds)
        metrics.model_warmup_seconds.labels(self.name).set(self.warmup_seconds)
        metrics.model_ready.labels(self.name).set(1)
        logger.info(
            "model ready",
            extra={"model": self.name, "load_ms": round(self.load_seconds * 1000, 1),
                   "warmup_ms": round(self.warmup_seconds * 1000, 1), "instances": config.instances},
        )  # fmt: skip

    def _start_batchers(self, metrics: Metrics, tracer: trace.Tracer) -> None:
        """An image batcher for every model; a text batcher on the same threads for text towers."""
        pairs = list(zip(self.workers, self.handlers, strict=True))
        self.batchers["image"] = DynamicBatcher(
            self.name,
            self.policy(),
            [(w, h.predict) for w, h in pairs],
            metrics,
            tracer,
            on_batch=self.stats.record_batch,
            eager=True,
        )
        tasks = self.handlers[0].tasks()
        if tasks & {"embed_text", "zero_shot"}:
            # Its own metric label, so queue depth and batch sizes of the two kinds stay apart.
            self.batchers["text"] = DynamicBatcher(
                f"{self.name}:text",
                self.policy(),
                [(w, h.predict_text) for w, h in pairs],
                metrics,
                tracer,
                on_batch=self.stats.record_batch,
                eager=True,
            )
        if "zero_shot" in tasks and self.label_cache is None:
            # Kept across watchdog restarts: the same weights give the same label embeddings.
            self.label_cache = LabelEmbeddingCache(self.name, self.config.label_cache_size, metrics)
        for batcher in self.batchers.values():
            batcher.start()

    async def release(self) -> None:
        """Unload every instance on its own thread and end the threads."""
        for worker, handler in zip(self.workers, self.handlers, strict=False):
            try:
                await worker.call(handler.unload)
            except Exception:
                logger.exception("unload failed", extra={"model": self.name})
        for worker in self.workers:
            worker.close()
        self.workers.clear()
        self.handlers.clear()


def _canary(handler: ModelHandler[Any, Any]) -> None:
    """One inference through preprocess and predict; readiness waits for it to succeed."""
    side = max(handler.decode_min_side() or 64, 32)
    image = Image.new("RGB", (side, side), (127, 127, 127))
    outputs = handler.predict([handler.preprocess(image)])
    if len(outputs) != 1:
        raise ModelLoadError(f"canary inference returned {len(outputs)} outputs for 1 input")
    if isinstance(outputs[0], BaseException):
        raise ModelLoadError(f"canary inference failed: {type(outputs[0]).__name__}: {outputs[0]}")
    if handler.tasks() & {"embed_text", "zero_shot"}:
        (text,) = handler.predict_text([handler.preprocess_text(["a photo"])])
        if isinstance(text, BaseException):
            raise ModelLoadError(f"canary text inference failed: {type(text).__name__}: {text}")
