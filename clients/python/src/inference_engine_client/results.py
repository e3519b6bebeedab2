"""Typed views of the server's JSON answers.

Each keeps the full decoded body in ``raw``: a custom handler may add top-level fields that the
typed view does not know about, and a newer server may add more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inference_engine_client.errors import InvalidResponse


def _require(body: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get(key), kind):
        raise InvalidResponse(f"the {what} answer has no valid {key!r} field")
    return body[key]


def _timings(body: dict[str, Any]) -> dict[str, float]:
    timings = body.get("timings_ms")
    if not isinstance(timings, dict):
        return {}
    return {str(k): float(v) for k, v in timings.items() if isinstance(v, int | float)}


@dataclass(frozen=True)
class ScoredLabel:
    """One prediction: the class label, its index in the model's labels (when it has one), its score."""

    label: str
    score: float
    index: int | None = None


@dataclass(frozen=True)
class Prediction:
    """A classification (or zero-shot) answer, best prediction first.

    ``model_version`` is the version that answered: the one pinned with ``version=``, or the one
    the server's traffic weights (and the routing key) chose.
    """

    model: str
    model_version: str | None
    request_id: str | None
    predictions: list[ScoredLabel]
    timings_ms: dict[str, float]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.predictions]

    @property
    def scores(self) -> list[float]:
        return [p.score for p in self.predictions]

    @property
    def top1(self) -> ScoredLabel | None:
        """The best prediction; ``None`` only for a custom handler that answers something else."""
        return self.predictions[0] if self.predictions else None

    @classmethod
    def from_json(cls, body: Any, *, header_version: str | None = None) -> Prediction:
        """``header_version`` (``X-Model-Version``) stands in when the body has no ``model_version``."""
        model = _require(body, "model", str, "prediction")
        items = body.get("predictions", [])
        predictions: list[ScoredLabel] = []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("score"), int | float):
                index = item.get("index")
                predictions.append(
                    ScoredLabel(
                        label=str(item.get("label", index)),
                        score=float(item["score"]),
                        index=index if isinstance(index, int) else None,
                    )
                )
        version = body.get("model_version")
        version = header_version if version is None else version
        return cls(
            model=model,
            model_version=None if version is None else str(version),
            request_id=body.get("request_id"),
            predictions=predictions,
            timings_ms=_timings(body),
            raw=body,
        )


@dataclass(frozen=True)
class Embeddings:
    """One L2-normalised vector per input, in the order sent; ``model_version`` answered them."""

    model: str
    model_version: str | None
    request_id: str | None
    modality: str
    dimension: int
    embeddings: list[list[float]]
    timings_ms: dict[str, float]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: Any, *, header_version: str | None = None) -> Embeddings:
        """``header_version`` (``X-Model-Version``) stands in when the body has no ``model_version``."""
        model = _require(body, "model", str, "embedding")
        vectors = _require(body, "embeddings", list, "embedding")
        if not all(isinstance(v, list) for v in vectors):
            raise InvalidResponse("the embedding answer's 'embeddings' is not a list of vectors")
        version = body.get("model_version")
        version = header_version if version is None else version
        dimension = body.get("dimension")
        return cls(
            model=model,
            model_version=None if version is None else str(version),
            request_id=body.get("request_id"),
            modality=str(body.get("modality", "")),
            dimension=dimension if isinstance(dimension, int) else (len(vectors[0]) if vectors else 0),
            embeddings=[[float(x) for x in v] for v in vectors],
            timings_ms=_timings(body),
            raw=body,
        )


@dataclass(frozen=True)
class Readiness:
    """``GET /ready``: ``ready`` is true only when every model is loaded and serving."""

    ready: bool
    status: str
    models: dict[str, str]
    reason: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: Any, status_code: int) -> Readiness:
        status = _require(body, "status", str, "readiness")
        models = body.get("models")
        return cls(
            ready=status_code == 200 and status == "ready",
            status=status,
            models={str(k): str(v) for k, v in models.items()} if isinstance(models, dict) else {},
            reason=body.get("reason"),
            raw=body,
        )


@dataclass(frozen=True)
class ModelInfo:
    """One served model from ``GET /v1/models``; ``metadata`` only from ``GET /v1/models/{name}``."""

    name: str
    state: str
    ready: bool
    version: str | None
    error: str | None
    metadata: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: Any) -> ModelInfo:
        name = _require(body, "name", str, "model")
        version = body.get("version")
        metadata = body.get("metadata")
        return cls(
            name=name,
            state=str(body.get("state", "")),
            ready=bool(body.get("ready", False)),
            version=None if version is None else str(version),
            error=body.get("error"),
            metadata=metadata if isinstance(metadata, dict) else None,
            raw=body,
        )
