"""One model and its served versions, and which version answers a request.

A request that names a version gets that version (404 when it is not served). One that names
only the model follows the model's ``traffic`` weights over its ready versions: a random draw,
or, with a routing key (``X-Routing-Key``), a point fixed by the key's hash, so the same key
lands on the same version for as long as the weights and readiness do not change. No per-key
state is kept.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from pathlib import Path

from inference_engine.answers import Route
from inference_engine.errors import ModelNotFound, ModelNotReady
from inference_engine.models.versions import ServingPlan
from inference_engine.runtime import ModelRuntime

#: The largest 64-bit value plus one: a key's hash as a point in [0, 1).
_SPAN = float(2**64)


def key_point(key: str) -> float:
    """A routing key's fixed point in ``[0, 1)`` (the same on every replica and every run)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SPAN


def pick(weights: list[tuple[str, float]], point: float) -> str:
    """The entry whose cumulative share covers ``point`` (weights in a fixed order)."""
    total = sum(weight for _, weight in weights)
    edge = 0.0
    for version, weight in weights:
        edge += weight / total
        if point < edge:
            return version
    return weights[-1][0]


def version_order(version: str) -> tuple[int, str]:
    """Numbered versions by number; any other name after them, by name."""
    return (int(version), "") if version.isdecimal() else (1 << 62, version)


class ServedModel:
    """A model's served versions, its plan, and whether an operator unloaded it."""

    def __init__(
        self,
        name: str,
        directory: Path | None,
        plan: ServingPlan | None,
        versions: Iterable[ModelRuntime],
        error: str | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        self.plan = plan or ServingPlan()
        self.versions: dict[str, ModelRuntime] = {
            r.version: r for r in sorted(versions, key=lambda r: version_order(r.version))
        }
        # Why no version serves at all (its shared model.yaml is wrong); None otherwise.
        self.error = error
        # Why the last load through model control failed (what serves was left as it was).
        self.last_failure: str | None = None
        self.unloaded = False

    # -- routing -----------------------------------------------------------------------------

    def route(self, version: str | None, key: str | None) -> Route:
        """The version that answers a request naming ``version`` (or none) with routing ``key``."""
        if self.unloaded:
            raise ModelNotReady(
                f"model {self.name} is unloaded; load it with POST /v2/repository/models/{self.name}/load",
                retry_after_s=30.0,
            )
        if version is not None:
            if version not in self.versions:
                served = ", ".join(self.versions) or "none"
                raise ModelNotFound(
                    f"model {self.name} has no version {version[:32]!r} served (served: {served})"
                )
            return Route(self.name, version)
        weights = [
            (v, w) for v, w in self.plan.traffic.items() if v in self.versions and self.versions[v].ready
        ]
        if not weights:
            raise ModelNotReady(f"model {self.name} is not ready: {self.not_ready_reason()}")
        point = key_point(key) if key is not None else random.random()
        return Route(self.name, pick(weights, point), routed=True)

    def runtime_for(self, route: Route, key: str | None = None) -> ModelRuntime:
        """The runtime of ``route``: re-routed when its version was retired since it was chosen
        (a request that named the version gets 404)."""
        runtime = self.versions.get(route.version)
        if runtime is not None and not self.unloaded:
            return runtime
        if not route.routed:
            self.route(route.version, key)  # raises the 404 (or 503 when unloaded)
        return self.versions[self.route(None, key).version]

    def shadows_of(self, primary: str) -> list[tuple[ModelRuntime, float]]:
        """The versions that get a copy of a request ``primary`` answered, with their shares."""
        return [
            (self.versions[v], share)
            for v, share in self.plan.shadow.items()
            if v != primary and v in self.versions
        ]

    # -- state -------------------------------------------------------------------------------

    @property
    def primary(self) -> ModelRuntime | None:
        """The version that describes the model: the newest that takes traffic."""
        weighted = [v for v in self.versions if self.plan.traffic.get(v, 0.0) > 0]
        chosen = weighted or list(self.versions)
        return self.versions[chosen[-1]] if chosen else None

    @property
    def ready(self) -> bool:
        return not self.unloaded and bool(self.versions) and all(r.ready for r in self.versions.values())

    def not_ready_reason(self) -> str:
        if self.unloaded:
            return "it is unloaded"
        if self.error is not None or not self.versions:
            return f"it failed to load: {self.error}"
        for version, runtime in self.versions.items():
            if not runtime.ready:
                reason = runtime.not_ready_reason()
                return reason if len(self.versions) == 1 else f"version {version}: {reason}"
        return "it is ready"
