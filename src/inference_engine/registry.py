"""The served models and their state: what a transport may ask before and besides a request.

:class:`ModelRegistry` holds one :class:`ServedModel` per model folder (a :class:`ModelRuntime`
per served version) and answers, as typed values, every query that touches no queue: which
model and version a request goes to (404 otherwise), whether
the server and each model are ready, each model's metadata, state and statistics, whether the
process should be replaced, and whether a model can take one more request right now.
:class:`~inference_engine.service.InferenceService` builds on it with the lifecycle and the
request path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from inference_engine.answers import ModelMetadata, ModelStatus, Readiness, Route
from inference_engine.describe import model_metadata, model_status
from inference_engine.errors import ModelLoadError, ModelNotFound, ModelNotReady, ShuttingDown
from inference_engine.metrics import Metrics
from inference_engine.models.base import Capabilities
from inference_engine.models.loader import BrokenModel, ModelSpec
from inference_engine.routing import ServedModel
from inference_engine.runtime import ModelRuntime, ModelState
from inference_engine.tenancy import DEFAULT_CALLER, Caller


class ModelRegistry:
    """The served models, by name, with their versions, and everything about them that is not
    a request."""

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
        # Failed reloads in a row (of any one version) after which liveness fails; 0: never.
        self.recovery_limit = recovery_limit
        self.models: dict[str, ServedModel] = {}
        for name in sorted({s.name for s in specs} | {b.name for b in broken}):
            self.models[name] = served_model(
                name, [s for s in specs if s.name == name], [b for b in broken if b.name == name], metrics
            )
        # Versions taken out of routing and still finishing what they accepted.
        self.retiring: set[ModelRuntime] = set()
        if default_model is not None and default_model not in self.models:
            served = ", ".join(sorted(self.models)) or "none"
            raise ModelLoadError(
                f"server.default_model {default_model!r} is not a served model (served: {served})"
            )
        self.default_model = default_model or (min(self.models) if self.models else None)
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    def served(self, name: str) -> ServedModel:
        """The model named ``name``; 404 for anything else."""
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise ModelNotFound(f"no model named {shown!r} (served: {known})") from None

    def runtimes(self) -> list[ModelRuntime]:
        """Every version in service or retiring (the watchdog's and shutdown's list)."""
        return [r for m in self.models.values() for r in m.versions.values()] + list(self.retiring)

    def runtime(self, name: str, version: str | None = None) -> ModelRuntime:
        """The runtime of ``version`` of ``name`` (``None``: the one that describes the model)."""
        model = self.served(name)
        if version is not None:
            return model.runtime_for(Route(name, version))
        primary = model.primary
        if primary is None:
            raise ModelNotReady(f"model {name} is not ready: {model.not_ready_reason()}")
        return primary

    def route(self, name: str | None, version: str | None = None, key: str | None = None) -> Route:
        """Which model (``None``: the default model) and version answer a request; 404 when
        either is unknown, 503 when the model is unloaded or no version it routes to is ready."""
        if name is None:
            if self.default_model is None:
                raise ModelNotFound("no model is configured")
            name = self.default_model
        model = self.served(name)
        if self._draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        return model.route(version, key)

    def readiness(self) -> Readiness:
        """Every loaded model's readiness (``None`` when ready, else why not), and whether draining.

        A model an operator unloaded is left out: the server is ready without it.
        """
        models = {
            name: None if m.ready else m.not_ready_reason()
            for name, m in sorted(self.models.items())
            if not m.unloaded
        }
        return Readiness(draining=self._draining, models=models)

    def admit(self, route: Route, deadline: float | None = None, caller: Caller = DEFAULT_CALLER) -> None:
        """Refuse a request before its body is read: 503 while draining, while the version is
        not ready, while its queue has no room (``queue_full`` with ``Retry-After``), or when
        predictive admission finds it would not be answered by ``deadline``.

        A refusal here costs no upload and no decoding; the checks run again as the inputs
        are prepared and queued, so this one may let through what they then refuse.
        """
        runtime = self.served(route.model).runtime_for(route)
        self._check_ready(runtime)
        runtime.batchers["image"].check_room(1, deadline=deadline, caller=caller)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        if self._draining:
            return False
        model = self.served(name)
        if version is None:
            return model.ready
        return not model.unloaded and model.runtime_for(Route(name, version)).ready

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        """Inputs, outputs and tasks of a version (503 for a folder that failed validation)."""
        model = self.served(name)
        runtime = self.runtime(name, version)
        return dataclasses.replace(model_metadata(runtime), versions=tuple(model.versions))

    def model_status(self, name: str) -> ModelStatus:
        return model_status(self.served(name))

    def models_status(self) -> list[ModelStatus]:
        """Every model's state, by name."""
        return [model_status(m) for _, m in sorted(self.models.items())]

    def statistics(self, name: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
        """Per-version totals in Triton's statistics shape: one model's (or version's), or all."""
        if name is None:
            runtimes = [r for _, m in sorted(self.models.items()) for r in m.versions.values()]
        elif version is None:
            runtimes = list(self.served(name).versions.values())
        else:
            runtimes = [self.runtime(name, version)]
        return [r.stats.as_triton(r.name, r.version) for r in runtimes]

    def refresh_gauges(self) -> None:
        """Bring the readiness gauges up to date before a scrape (a batch loop may have died)."""
        # Retiring ones first: a version reloaded from new files is reported by its new instance.
        for runtime in [*self.retiring, *(r for m in self.models.values() for r in m.versions.values())]:
            self.metrics.model_ready.labels(*runtime.labels).set(1 if runtime.ready else 0)

    def liveness(self) -> str | None:
        """``None`` while the process should keep running, else why it should be replaced.

        A model whose reloads keep failing will not come back in this process (a hung forward
        pass may still hold the memory a reload needs); past ``recovery_limit`` failures in a row
        the liveness probe fails so that the orchestrator starts a fresh one.
        """
        if self.recovery_limit <= 0:
            return None
        for runtime in self.runtimes():
            if runtime.failed_recoveries >= self.recovery_limit:
                return (
                    f"model {runtime.name} version {runtime.version} failed {runtime.failed_recoveries} "
                    f"reloads in a row (limit {self.recovery_limit}): {runtime.error}"
                )
        return None

    def _check_ready(self, runtime: ModelRuntime) -> Capabilities:
        """What the version offers, once it can take work (503 while draining or not ready)."""
        if self._draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if not runtime.ready or runtime.capabilities is None:
            raise ModelNotReady(f"model {runtime.name} is not ready: {runtime.not_ready_reason()}")
        return runtime.capabilities


def served_model(
    name: str, specs: list[ModelSpec], broken: list[BrokenModel], metrics: Metrics
) -> ServedModel:
    """A model's served versions from its validated specs and its broken ones (failed at once)."""
    runtimes = [ModelRuntime(name, spec, version=spec.version) for spec in specs]
    error = None
    for bad in broken:
        if bad.version is None:  # the shared model.yaml: no version serves
            error = bad.error
            metrics.model_load_failures.labels(name, "").inc()
            continue
        runtimes.append(ModelRuntime(name, None, ModelState.FAILED, bad.error, version=bad.version))
        metrics.model_load_failures.labels(name, bad.version).inc()
        metrics.model_ready.labels(name, bad.version).set(0)
    plan = specs[0].plan if specs else next((b.plan for b in broken if b.plan is not None), None)
    directory = specs[0].directory if specs else (broken[0].directory if broken else None)
    if specs and specs[0].directory.name.isdecimal():
        directory = specs[0].directory.parent
    elif broken and broken[0].version is not None:
        directory = broken[0].directory.parent
    model = ServedModel(name, directory, plan, runtimes, error)
    for version, weight in model.plan.traffic.items():
        metrics.traffic_weight.labels(name, version).set(weight)
    return model
