"""The asynchronous client (``httpx.AsyncClient``): for asyncio services and high fan-out.

Its methods take ``timeout=`` like the synchronous client's (ruff's ASYNC109 would rather have
callers wrap them in ``asyncio.timeout``): the value is not only a cancellation point, it is the
budget for retries and waits and is sent to the server as ``X-Request-Timeout-Ms``, which an
outer ``asyncio.timeout`` cannot do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from inference_engine_client import _core
from inference_engine_client._core import ClientSettings, ImageInput, RequestSpec
from inference_engine_client.breaker import CircuitBreaker
from inference_engine_client.results import Embeddings, ModelInfo, Prediction, Readiness
from inference_engine_client.retry import RetryPolicy


class AsyncInferenceClient:
    """An asyncio client for one inference-engine server's native HTTP API.

    Share one per event loop: ``httpx.AsyncClient`` pools connections, and ``asyncio.gather`` over
    many ``predict`` calls lets the server batch them. ``timeout`` bounds a whole call including
    its retries and waits (``None``: no bound); ``connect_timeout`` and ``read_timeout`` bound
    each attempt's phases. ``breaker=True`` gives the client its own :class:`CircuitBreaker` with
    default settings; pass one to tune it, or ``False`` for none. ``sleep`` and ``clock`` exist
    so tests can drive the retry schedule.
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
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
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
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_core.default_headers(api_key, headers), transport=transport
        )

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self.settings.breaker

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def predict(
        self,
        image: ImageInput,
        *,
        model: str | None = None,
        top_k: int | None = None,
        labels: Iterable[str] | None = None,
        version: str | None = None,
        routing_key: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
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
        response = await self._send(spec, timeout, request_id)
        return Prediction.from_json(
            _core.decode_json(response), header_version=_core.answered_version(response)
        )

    async def embed_images(
        self,
        images: Iterable[ImageInput],
        *,
        model: str,
        version: str | None = None,
        routing_key: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Embeddings:
        """One embedding per image, in order, from a model that embeds images.

        ``version`` and ``routing_key`` choose the model's version as for :meth:`predict`.
        """
        spec = _core.embed_request(model, images=images, version=version, routing_key=routing_key)
        return await self._embeddings(spec, timeout)

    async def embed_texts(
        self,
        texts: Iterable[str],
        *,
        model: str,
        version: str | None = None,
        routing_key: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Embeddings:
        """One embedding per text, in order, from a model with a text tower (CLIP).

        ``version`` and ``routing_key`` choose the model's version as for :meth:`predict`.
        """
        spec = _core.embed_request(model, texts=texts, version=version, routing_key=routing_key)
        return await self._embeddings(spec, timeout)

    async def health(self, *, timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        """``GET /health``; raises unless the process answers HTTP. Bypasses the breaker."""
        return _core.parse_health(await self._json(_core.HEALTH, timeout))

    async def ready(self, *, timeout: float | None = None) -> Readiness:  # noqa: ASYNC109
        """``GET /ready``; a 503 is an answer here (``ready`` is False), not an error."""
        response = await self._send(_core.READY, timeout, None)
        return Readiness.from_json(_core.decode_json(response), response.status_code)

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:  # noqa: ASYNC109
        """``GET /v1/models``: every served model and its state."""
        return _core.parse_models(await self._json(_core.MODELS, timeout))

    async def model(self, name: str, *, timeout: float | None = None) -> ModelInfo:  # noqa: ASYNC109
        """``GET /v1/models/{name}``: one model, with its inputs, outputs and labels count."""
        return ModelInfo.from_json(await self._json(_core.model_request(name), timeout))

    async def _embeddings(self, spec: RequestSpec, budget: float | None) -> Embeddings:
        response = await self._send(spec, budget, None)
        return Embeddings.from_json(
            _core.decode_json(response), header_version=_core.answered_version(response)
        )

    async def _json(self, spec: RequestSpec, budget: float | None, request_id: str | None = None) -> Any:
        return _core.decode_json(await self._send(spec, budget, request_id))

    async def _send(self, spec: RequestSpec, budget: float | None, request_id: str | None) -> httpx.Response:
        call = self.settings.call(spec, budget, request_id)
        while True:
            request = call.begin()
            try:
                response = await self._http.request(**request)
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
            await self._sleep(delay)
