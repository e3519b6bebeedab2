"""The served models and their state: what a transport may ask before and besides a request.

:class:`ModelRegistry` holds one :class:`ModelRuntime` per model folder and answers, as typed
values, every query that touches no queue: which model a request means (404 otherwise), whether
the server and each model are ready, each model's metadata, state and statistics, whether the
process should be replaced, and whether a model can take one more request right now.
:class:`~inference_engine.service.InferenceService` builds on it with the lifecycle and the
request path.
"""

from __future__ import annotations

from typing import Any

from inference_engine.answers import ModelMetadata, ModelStatus, Readiness
from inference_engine.describe import model_metadata, model_status
from inference_engine.errors import ModelLoadError, ModelNotFound, ModelNotReady, ShuttingDown
from inference_engine.metrics import Metrics
from inference_engine.models.base import Capabilities
from inference_engine.models.loader import BrokenModel, ModelSpec
from inference_engine.runtime import ModelRuntime, ModelState


class ModelRegistry:
    """The served models, by name, and everything about them that is not a request."""

    def __init__(
        self,
        specs: list[ModelSpec],
        broken: list[BrokenModel],
        metrics: Metrics,
        *,
        default_model: str | None = None,
        recovery_limit: int = 3,
    ) -> None:
        self.metrics = metrics
        # Failed reloads in a row (of any one model) after which liveness fails; 0: never.
        self.recovery_limit = recovery_limit
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
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    def runtime(self, name: str, version: str | None = None) -> ModelRuntime:
        """The runtime serving ``name`` (``version`` of it when given); 404 for anything else."""
        try:
            runtime = self.runtimes[name]
        except KeyError:
            known = ", ".join(sorted(self.runtimes)) or "none"
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise ModelNotFound(f"no model named {shown!r} (served: {known})") from None
        if version is not None and runtime.spec is not None and version != runtime.config.version:
            raise ModelNotFound(
                f"model {runtime.name} has no version {version[:32]!r} (served: {runtime.config.version})"
            )
        return runtime

    def model_name(self, name: str | None, version: str | None = None) -> str:
        """The served model a request names (``None``: the default model); 404 when unknown."""
        if name is None:
            if self.default_model is None:
                raise ModelNotFound("no model is configured")
            name = self.default_model
        return self.runtime(name, version).name

    def readiness(self) -> Readiness:
        """Every model's readiness (``None`` when ready, else why not), and whether draining."""
        models = {
            name: None if r.ready else r.not_ready_reason() for name, r in sorted(self.runtimes.items())
        }
        return Readiness(draining=self._draining, models=models)

    def admit(self, name: str, version: str | None = None) -> None:
        """Refuse a request for ``name`` before its body is read: 503 while draining, while the
        model is not ready, or while its queue has no room (``queue_full`` with ``Retry-After``).

        A refusal here costs no upload and no decoding; the checks run again as the inputs
        are prepared and queued, so this one may let through what they then refuse.
        """
        runtime = self.runtime(name, version)
        self._check_ready(runtime)
        runtime.batchers["image"].check_room(1)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.runtime(name, version).ready and not self._draining

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        """Inputs, outputs and tasks of a model (503 for a folder that failed validation)."""
        return model_metadata(self.runtime(name, version))

    def model_status(self, name: str) -> ModelStatus:
        return model_status(self.runtime(name))

    def models(self) -> list[ModelStatus]:
        """Every model's state, by name."""
        return [model_status(r) for _, r in sorted(self.runtimes.items())]

    def statistics(self, name: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
        """Per-model totals in Triton's statistics shape: one model's, or every model's."""
        runtimes = (
            [self.runtime(name, version)]
            if name is not None
            else [r for _, r in sorted(self.runtimes.items())]
        )
        return [r.stats.as_triton(r.name, r.spec.config.version if r.spec else "") for r in runtimes]

    def refresh_gauges(self) -> None:
        """Bring the readiness gauges up to date before a scrape (a batch loop may have died)."""
        for runtime in self.runtimes.values():
            self.metrics.model_ready.labels(runtime.name).set(1 if runtime.ready else 0)

    def liveness(self) -> str | None:
        """``None`` while the process should keep running, else why it should be replaced.

        A model whose reloads keep failing will not come back in this process (a hung forward
        pass may still hold the memory a reload needs); past ``recovery_limit`` failures in a row
        the liveness probe fails so that the orchestrator starts a fresh one.
        """
        if self.recovery_limit <= 0:
            return None
        for runtime in self.runtimes.values():
            if runtime.failed_recoveries >= self.recovery_limit:
                return (
                    f"model {runtime.name} failed {runtime.failed_recoveries} reloads in a row "
                    f"(limit {self.recovery_limit}): {runtime.error}"
                )
        return None

    def _check_ready(self, runtime: ModelRuntime) -> Capabilities:
        """What the model offers, once it can take work (503 while draining or not ready)."""
        if self._draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if not runtime.ready or runtime.capabilities is None:
            raise ModelNotReady(f"model {runtime.name} is not ready: {runtime.not_ready_reason()}")
        return runtime.capabilities
