"""Shadow traffic: a copy of a model's requests sent to another version, compared, never answered.

``shadow: {"2": 100}`` in a model's ``model.yaml`` copies that share of the requests the traffic
weights route (those that name no version) to version 2 once the primary answer is ready. The
caller never waits for the copy and never sees its failure. Each copy's outputs are compared
with the primary's and the agreement is exported per version pair: the same top-1 class and
the score difference for classifiers, the cosine for embeddings.

Shadows shed first: at most ``max_in_flight`` copies run at once (per server), a copy is not
made while the primary's callers queue past one batch, and it is not queued unless the shadow
version's queue would stay at most half full, so a shadow yields to callers as load rises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_engine.answers import Modality, OutputName, Route, Rows, Vector
from inference_engine.errors import EngineError
from inference_engine.metrics import Metrics
from inference_engine.routing import ServedModel
from inference_engine.runtime import ModelRuntime

logger = logging.getLogger("inference_engine.shadow")

#: Embeddings closer than this (cosine) count as agreeing.
COSINE_AGREEMENT = 0.99
#: A shadow copy's own deadline: it must not hold queue room longer than a slow caller would.
SHADOW_TIMEOUT_S = 30.0
#: A summary line per version pair every this many comparisons.
SUMMARY_EVERY = 100

RunRows = Callable[..., Awaitable[Rows]]


@dataclass
class _Tally:
    compared: int = 0
    agreed: int = 0
    score_difference: float = 0.0  # summed, for the summary line's mean
    failed: int = 0
    shed: int = 0


class ShadowTraffic:
    """Sends copies to shadow versions in the background and records how they compare."""

    def __init__(self, run_rows: RunRows, metrics: Metrics, *, max_in_flight: int = 32) -> None:
        self._run_rows = run_rows
        self._metrics = metrics
        self.max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._tallies: dict[tuple[str, str, str], _Tally] = {}

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def offer(
        self,
        model: ServedModel,
        route: Route,
        inputs: Mapping[str, Any],
        primary: Mapping[OutputName, Vector],
    ) -> None:
        """Copy a routed request to the model's shadow versions, by their shares; returns at once."""
        if not route.routed:
            return
        for shadow, share in model.shadows_of(route.version):
            if share < 1.0 and random.random() >= share:
                continue
            pair = (model.name, route.version, shadow.version)
            if not self._has_room(shadow, model.versions.get(route.version), inputs):
                self._count(pair, "shed")
                continue
            task = asyncio.create_task(self._shadow(pair, inputs, primary), name=f"shadow-{shadow.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _has_room(
        self, shadow: ModelRuntime, primary: ModelRuntime | None, inputs: Mapping[str, Any]
    ) -> bool:
        """Room for the copy without crowding callers: under the cap, callers of the primary not
        queueing past one batch (a copy would only lengthen their wait), and the shadow's queue
        half free."""
        if len(self._tasks) >= self.max_in_flight or not shadow.ready:
            return False
        kind: Modality = "text" if "texts" in inputs else "image"
        answering = primary.batchers.get(kind) if primary is not None else None
        if answering is not None and answering.waiting > answering.policy.max_batch_size:
            return False
        batcher = shadow.batchers.get(kind)
        if batcher is None:
            return False
        count = sum(len(inputs.get(kind, ())) for kind in ("images", "tensors", "texts"))
        try:
            batcher.check_room(count + batcher.policy.max_queue_size // 2)
        except EngineError:
            return False
        return True

    async def _shadow(
        self, pair: tuple[str, str, str], inputs: Mapping[str, Any], primary: Mapping[OutputName, Vector]
    ) -> None:
        model, _, version = pair
        try:
            rows = await self._run_rows(
                Route(model, version),
                deadline=time.monotonic() + SHADOW_TIMEOUT_S,
                request_id="shadow",
                outputs=list(primary),
                **inputs,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never the caller's problem: counted and logged
            self._count(pair, "failed")
            logger.warning(
                "shadow request failed",
                extra={
                    "model": model,
                    "primary": pair[1],
                    "shadow": version,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            return
        self._compare(pair, primary, rows.tensors)

    def _compare(
        self,
        pair: tuple[str, str, str],
        primary: Mapping[OutputName, Vector],
        shadow: Mapping[OutputName, Vector],
    ) -> None:
        tally = self._tallies.setdefault(pair, _Tally())
        agreed = compared = 0
        probabilities = primary.get("probabilities")
        if probabilities is not None and "probabilities" in shadow:
            for mine, theirs in zip(probabilities, shadow["probabilities"], strict=False):
                top = int(np.argmax(mine))
                difference = abs(float(mine[top]) - float(theirs[top])) if top < len(theirs) else 1.0
                compared += 1
                agreed += int(top == int(np.argmax(theirs)))
                tally.score_difference += difference
                self._metrics.shadow_score_difference.labels(*pair).observe(difference)
        elif "embeddings" in primary and "embeddings" in shadow:
            for mine, theirs in zip(primary["embeddings"], shadow["embeddings"], strict=False):
                cosine = _cosine(mine, theirs)
                compared += 1
                agreed += int(cosine >= COSINE_AGREEMENT)
                self._metrics.shadow_cosine.labels(*pair).observe(cosine)
        tally.compared += compared
        tally.agreed += agreed
        self._metrics.shadow_requests.labels(*pair, "compared").inc()
        self._metrics.shadow_agreements.labels(*pair).inc(agreed)
        if tally.compared:
            self._metrics.shadow_agreement_ratio.labels(*pair).set(tally.agreed / tally.compared)
        if compared and tally.compared // SUMMARY_EVERY != (tally.compared - compared) // SUMMARY_EVERY:
            self._summary(pair, tally)

    def _count(self, pair: tuple[str, str, str], outcome: str) -> None:
        tally = self._tallies.setdefault(pair, _Tally())
        if outcome == "failed":
            tally.failed += 1
        else:
            tally.shed += 1
        self._metrics.shadow_requests.labels(*pair, outcome).inc()

    def _summary(self, pair: tuple[str, str, str], tally: _Tally) -> None:
        logger.info(
            "shadow agreement",
            extra={
                "model": pair[0], "primary": pair[1], "shadow": pair[2], "compared": tally.compared,
                "agreement": round(tally.agreed / tally.compared, 4) if tally.compared else None,
                "mean_score_difference": (
                    round(tally.score_difference / tally.compared, 6) if tally.compared else None
                ),
                "failed": tally.failed, "shed": tally.shed,
            },
        )  # fmt: skip

    def restart(self, model: str) -> None:
        """Log the summary of every pair of ``model`` and start counting afresh (its versions or
        plan changed: a new shadow's agreement must not inherit the old one's, and a removed
        shadow's ratio must not linger, nor an alert on it)."""
        for pair in [p for p in self._tallies if p[0] == model]:
            tally = self._tallies.pop(pair)
            if tally.compared or tally.failed or tally.shed:
                self._summary(pair, tally)
            with contextlib.suppress(KeyError):
                self._metrics.shadow_agreement_ratio.remove(*pair)

    async def settle(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for the copies running now to finish."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    async def stop(self) -> None:
        """Cancel the copies still running (shutdown: nobody waits for them)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _cosine(a: Vector, b: Vector) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0 or a.shape != b.shape:
        return 0.0
    return float(np.dot(a, b) / (na * nb))
