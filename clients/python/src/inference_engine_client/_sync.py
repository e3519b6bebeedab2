"""The synchronous client (``httpx.Client``): for scripts, notebooks and thread pools."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from inference_engine_client import _core
from inference_engine_client._core import ClientSettings, ImageInput, RequestSpec
from inference_engine_client.breaker import CircuitBreaker
from inference_engine_client.results import Embeddings, ModelInfo, Prediction, Readiness
from inference_engine_client.retry import RetryPolicy


class InferenceClient:
    """A client for one inference-engine server's native HTTP API.

    Safe to share between threads (``httpx.Client`` pools connections; the breaker is locked).
    ``timeout`` bounds a whole call including its retries and waits (``None``: no bound);
    ``connect_timeout`` and ``read_timeout`` bound each attempt's phases. ``breaker=True`` gives
    the client its own :class:`CircuitBreaker` with default settings; pass one to tune it, or
    ``False`` for none. ``sleep`` and ``clock`` exist so tests can drive the retry schedule.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | bool = True,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = ClientSettings(
            connect_timeout_s=connect_timeout,
            read_timeout_s=read_timeout,
            total_timeout_s=timeout,
            retry=retry or RetryPolicy(),
            breaker=_core.make_breaker(breaker),
            clock=clock,
        )
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url, headers=_core.default_headers(api_key, headers), transport=transport
        )

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self.settings.breaker

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def predict(
        self,
        image: ImageInput,
        *,
        model: str | None = None,
        top_k: int | None = None,
        labels: Iterable[str] | None = None,
        version: str | None = None,
        routing_key: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Prediction:
        """Classify one image (with the server's default model when ``model`` is None).

        ``labels`` asks a zero-shot model (CLIP) to rank these labels instead of its own classes.
        ``version`` pins the model's version (it needs ``model``); without it the server picks one
        by the model's traffic weights, the same one for every call with the same ``routing_key``
        (sent as ``X-Routing-Key``). ``Prediction.model_version`` says which version answered.
        """
        spec = _core.predict_request(
            image, model=model, top_k=top_k, labels=labels, version=version, routing_key=routing_key
        )
        response = self._send(spec, timeout, request_id)
        return Prediction.from_json(
            _core.decode_json(response), header_version=_core.answered_version(response)
        )

    def embed_images(
        self,
        images: Iterable[ImageInput],
        *,
        model: str,
        version: str | None = None,
        routing_key: str | None = None,
        timeout: float | None = None,
    ) -> Embeddings:
        """One embedding per image, in order, from a model that embeds images.

        ``version`` and ``routing_key`` choose the model's version as for :meth:`predict`.
        """
        spec = _core.embed_request(model, images=images, version=version, routing_key=routing_key)
        return self._embeddings(spec, timeout)

    def embed_texts(
        self,
        texts: Iterable[str],
        *,
        model: str,
        version: str | None = None,
        routing_key: str | None = None,
        timeout: float | None = None,
    ) -> Embeddings:
        """One embedding per text, in order, from a model with a text tower (CLIP).

        ``version`` and ``routing_key`` choose the model's version as for :meth:`predict`.
        """
        spec = _core.embed_request(model, texts=texts, version=version, routing_key=routing_key)
        return self._embeddings(spec, timeout)

    def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /health``; raises unless the process answers HTTP. Bypasses the breaker."""
        return _core.parse_health(self._json(_core.HEALTH, timeout))

    def ready(self, *, timeout: float | None = None) -> Readiness:
        """``GET /ready``; a 503 is an answer here (``ready`` is False), not an error."""
        response = self._send(_core.READY, timeout, None)
        return Readiness.from_json(_core.decode_json(response), response.status_code)

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """``GET /v1/models``: every served model and its state."""
        return _core.parse_models(self._json(_core.MODELS, timeout))

    def model(self, name: str, *, timeout: float | None = None) -> ModelInfo:
        """``GET /v1/models/{name}``: one model, with its inputs, outputs and labels count."""
        return ModelInfo.from_json(self._json(_core.model_request(name), timeout))

    def _embeddings(self, spec: RequestSpec, timeout: float | None) -> Embeddings:
        response = self._send(spec, timeout, None)
        return Embeddings.from_json(
            _core.decode_json(response), header_version=_core.answered_version(response)
        )

    def _json(self, spec: RequestSpec, timeout: float | None, request_id: str | None = None) -> Any:
        return _core.decode_json(self._send(spec, timeout, request_id))

    def _send(self, spec: RequestSpec, timeout: float | None, request_id: str | None) -> httpx.Response:
        call = self.settings.call(spec, timeout, request_id)
        while True:
            request = call.begin()
            try:
                response = self._http.request(**request)
            except httpx.TransportError as exc:
                delay = call.failed(exc)
            except BaseException:
                call.abandon()
                raise
            else:
                answer = call.answered(response)
                if answer is None:
                    return response
                delay = answer
            self._sleep(delay)
