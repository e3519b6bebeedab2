"""One served model's moving parts: spec, instances, batchers, state, and the label cache.

A model answers through one or two batchers that share its instance threads: ``image`` for
everything that starts from a picture, and ``text`` for models with a text tower (CLIP, FLAVA),
so text and image inputs batch separately but never run two forward passes on one instance
at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

from inference_engine.batching import BatchPolicy, DynamicBatcher, ModelWorker
from inference_engine.errors import ModelNotReady
from inference_engine.labelcache import LabelEmbeddingCache
from inference_engine.models.base import ModelConfig, ModelHandler
from inference_engine.models.loader import ModelSpec

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
