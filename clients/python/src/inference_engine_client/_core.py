"""What the synchronous and asynchronous clients share: requests, and one call's attempt loop.

The attempt loop is written "sans I/O": :class:`Call` decides (which timeout, which headers,
whether the breaker allows the attempt, whether to retry and after how long) and the two
clients only do the sending and the sleeping. So retry, deadline and breaker behaviour is one
piece of code, tested once, whichever client runs it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Union
from urllib.parse import quote

import httpx

from inference_engine_client._version import __version__
from inference_engine_client.breaker import CircuitBreaker, Permit
from inference_engine_client.errors import (
    CircuitOpen,
    ConnectError,
    InferenceError,
    InvalidResponse,
    Timeout,
    error_from_response,
)
from inference_engine_client.results import ModelInfo
from inference_engine_client.retry import RetryPolicy, parse_retry_after

if TYPE_CHECKING:
    from PIL import Image

#: An image to send: a file path, its encoded bytes, an open binary file, or a PIL image.
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], "Image.Image"]

TIMEOUT_HEADER = "X-Request-Timeout-Ms"
#: Requests with the same key go to the same version of a model (while its weights hold).
ROUTING_KEY_HEADER = "X-Routing-Key"
#: The version that answered, on every inference answer (the JSON's ``model_version`` too).
MODEL_VERSION_HEADER = "X-Model-Version"
#: Failures where nothing reached the server, so sending again cannot run the work twice.
_SAFE_TO_RETRY = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: The connection broke before the answer came (reset, closed, a write that failed): the server
#: may have started the work, and may have died with it (a process killed or restarted). Sent
#: again only when the request is idempotent. Timeouts are not among them: a server that is slow
#: is still working on the request.
_LOST_CONNECTION = (httpx.NetworkError, httpx.RemoteProtocolError)


def encode_image(image: ImageInput) -> bytes:
    """The encoded image bytes to send; a PIL image is encoded as PNG (lossless, any mode)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    read = getattr(image, "read", None)
    if callable(read):
        data = read()
        if not isinstance(data, bytes):
            raise TypeError("a file object must be opened in binary mode ('rb')")
        return data
    # A PIL image exists only where Pillow is imported: the client does not need Pillow otherwise.
    pil_image = sys.modules.get("PIL.Image")
    if pil_image is not None and isinstance(image, pil_image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"cannot send {type(image).__name__} as an image: pass a path, bytes or a PIL image")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class RequestSpec:
    """One API request, before timeouts and per-attempt headers are added.

    ``deadline`` requests carry ``X-Request-Timeout-Ms`` so that the server drops work the client
    has given up on. ``guarded`` requests pass through the circuit breaker; the probes
    (``/health``, ``/ready``) do not, so they stay usable to find out whether a server is back.
    ``ok`` lists the statuses whose body is an answer rather than an error. ``idempotent``
    requests change nothing on the server (inference, reads), so one whose connection was lost
    before its answer is sent again; a request not marked so is retried only when nothing was
    sent.
    """

    method: str
    path: str
    params: Mapping[str, str | int] | None = None
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    deadline: bool = False
    guarded: bool = True
    ok: frozenset[int] = frozenset({200})
    idempotent: bool = False


def _json_body(document: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps(document, separators=(",", ":")).encode(), {"Content-Type": "application/json"}


def model_path(model: str, action: str, version: str | None = None) -> str:
    """``/v1/models/{model}/{action}``, or ``/v1/models/{model}/versions/{version}/{action}``.

    Both names are quoted whole (a ``/`` becomes ``%2F``). A version of ``""``, ``.`` or ``..``
    is refused: the URL would be normalised to another route (``..`` to the unpinned one).
    """
    path = f"/v1/models/{quote(model, safe='')}"
    if version is not None:
        if version in ("", ".", ".."):
            raise ValueError(f"version {version!r} is not a version name")
        path += f"/versions/{quote(version, safe='')}"
    return f"{path}/{action}"


def routing_headers(routing_key: str | None) -> dict[str, str]:
    """``X-Routing-Key`` when a key is given; it must be printable ASCII to travel as a header."""
    if routing_key is None:
        return {}
    if not all(" " <= c <= "~" for c in routing_key):
        raise ValueError(
            f"routing_key must be a str of printable ASCII characters (hash or encode it first), "
            f"not {routing_key!r:.60}"
        )
    return {ROUTING_KEY_HEADER: routing_key}


def predict_request(
    image: ImageInput,
    *,
    model: str | None,
    top_k: int | None,
    labels: Iterable[str] | None,
    version: str | None = None,
    routing_key: str | None = None,
) -> RequestSpec:
    """``POST /predict``, ``/v1/models/{model}/predict`` or ``.../versions/{version}/predict``;
    JSON when ``labels`` asks for zero-shot."""
    if model is None:
        if version is not None:
            raise ValueError(
                f"version={version!r} needs model=: the default model's route (/predict) cannot pin a version"
            )
        path = "/predict"
    else:
        path = model_path(model, "predict", version)
    routing = routing_headers(routing_key)
    data = encode_image(image)
    if labels is not None:
        content, headers = _json_body({"image": _b64(data), "labels": list(labels)})
    else:  # the raw body: no base64 inflation, no multipart parsing on the server
        content, headers = data, {"Content-Type": "application/octet-stream"}
    params = {"top_k": top_k} if top_k is not None else None
    return RequestSpec(
        "POST",
        path,
        params=params,
        content=content,
        headers={**headers, **routing},
        deadline=True,
        idempotent=True,
    )


def embed_request(
    model: str,
    *,
    images: Iterable[ImageInput] | None = None,
    texts: Iterable[str] | None = None,
    version: str | None = None,
    routing_key: str | None = None,
) -> RequestSpec:
    """``POST /v1/models/{model}[/versions/{version}]/embed`` with ``{"images": [...]}`` or
    ``{"texts": [...]}``."""
    path = model_path(model, "embed", version)
    routing = routing_headers(routing_key)
    if images is not None:
        document: dict[str, list[str]] = {"images": [_b64(encode_image(i)) for i in images]}
    else:
        document = {"texts": [str(t) for t in texts or ()]}
    content, headers = _json_body(document)
    return RequestSpec(
        "POST", path, content=content, headers={**headers, **routing}, deadline=True, idempotent=True
    )


def answered_version(response: httpx.Response) -> str | None:
    """The ``X-Model-Version`` header: which version answered, when the body does not say."""
    version: str | None = response.headers.get(MODEL_VERSION_HEADER)
    return version


@dataclass(frozen=True)
class ClientSettings:
    """A client's connection settings, shared by every call it makes."""

    connect_timeout_s: float
    read_timeout_s: float
    total_timeout_s: float | None
    retry: RetryPolicy
    breaker: CircuitBreaker | None
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time

    def call(self, spec: RequestSpec, timeout: float | None, request_id: str | None) -> Call:
        return Call(self, spec, self.total_timeout_s if timeout is None else timeout, request_id)


def default_headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"User-Agent": f"inference-engine-client/{__version__}", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(extra or {})
    return headers


def make_breaker(breaker: CircuitBreaker | bool) -> CircuitBreaker | None:
    if breaker is True:
        return CircuitBreaker()
    return breaker or None


def _where(exc: httpx.TransportError) -> str:
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised without its request
        return ""
    return f" to {url.host}:{url.port}" if url.port else f" to {url.host}"


class Call:
    """One API call across its attempts: timeouts, the breaker, and the retry decisions.

    The clients run ``begin`` -> send -> ``answered``/``failed`` -> sleep the returned delay, until
    ``answered`` returns ``None`` (the response is the answer) or a method raises.
    """

    def __init__(
        self, settings: ClientSettings, spec: RequestSpec, total: float | None, request_id: str | None
    ):
        self.settings = settings
        self.spec = spec
        self.request_id = request_id
        self.deadline = None if total is None else settings.clock() + total
        self.attempts = 0
        self._permit: Permit | None = None
        self._last_error: InferenceError | None = None

    def begin(self) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.request`` for the next attempt."""
        settings = self.settings
        read = settings.read_timeout_s
        connect = settings.connect_timeout_s
        if self.deadline is not None:
            remaining = self.deadline - settings.clock()
            if remaining <= 0:
                raise Timeout(
                    f"the call's timeout ran out after {self.attempts} attempt(s)", code="timeout"
                ) from self._last_error
            read, connect = min(read, remaining), min(connect, remaining)
        if self.spec.guarded and settings.breaker is not None:
            try:
                self._permit = settings.breaker.acquire()
            except CircuitOpen as exc:
                raise exc from self._last_error
        headers = dict(self.spec.headers)
        if self.spec.deadline:  # the server gives up when this attempt's reader would
            headers[TIMEOUT_HEADER] = str(max(1, int(read * 1000)))
        if self.request_id is not None:
            headers["X-Request-ID"] = self.request_id
        self.attempts += 1
        return {
            "method": self.spec.method,
            "url": self.spec.path,
            "params": self.spec.params,
            "content": self.spec.content,
            "headers": headers,
            "timeout": httpx.Timeout(connect=connect, read=read, write=read, pool=connect),
        }

    def answered(self, response: httpx.Response) -> float | None:
        """``None`` when ``response`` is the answer, else the delay before retrying (or raise)."""
        status = response.status_code
        if status in self.spec.ok:
            self._verdict(True)
            return None
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=self.settings.wall_clock())
        error = error_from_response(response, retry_after)
        self._verdict(None if status == 429 else status < 500)
        if status not in self.settings.retry.retry_statuses:
            raise error
        return self._retry_delay(error, retry_after)

    def failed(self, exc: httpx.TransportError) -> float:
        """The delay before retrying after a transport failure, or raise the typed error."""
        self._verdict(False)
        error: InferenceError
        if isinstance(exc, httpx.TimeoutException):
            name = type(exc).__name__
            phase = name.removesuffix("Timeout").lower() if name.endswith("Timeout") else "request"
            error = Timeout(f"{phase} timed out: {exc}".rstrip(": "), code=f"{phase}_timeout")
        elif isinstance(exc, httpx.ConnectError):
            error = ConnectError(f"could not connect{_where(exc)} ({exc})", code="connect_error")
        else:
            what = f"{type(exc).__name__}: {exc}".rstrip(": ")
            error = ConnectError(
                f"the connection{_where(exc)} failed before an answer ({what})", code="connect_error"
            )
        lost = self.spec.idempotent and isinstance(exc, _LOST_CONNECTION)
        if not (lost or isinstance(exc, _SAFE_TO_RETRY)):
            raise error from exc
        try:
            return self._retry_delay(error, None)
        except InferenceError as final:
            raise final from exc

    def abandon(self) -> None:
        """The attempt ended without a verdict (cancelled, interrupted): free a probe slot."""
        if self._permit is not None and self.settings.breaker is not None:
            self.settings.breaker.release(self._permit)
        self._permit = None

    def _verdict(self, healthy: bool | None) -> None:
        breaker, permit = self.settings.breaker, self._permit
        self._permit = None
        if breaker is None or permit is None:
            return
        if healthy is None:
            breaker.release(permit)
        elif healthy:
            breaker.record_success(permit)
        else:
            breaker.record_failure(permit)

    def _retry_delay(self, error: InferenceError, retry_after: float | None) -> float:
        self._last_error = error
        policy = self.settings.retry
        if self.attempts >= policy.max_attempts:
            raise error
        delay = policy.delay(self.attempts - 1, retry_after)
        if delay is None:  # the server asks for a longer wait than this client is willing to give
            raise error
        if self.deadline is not None and self.settings.clock() + delay >= self.deadline:
            raise error
        return delay


HEALTH = RequestSpec("GET", "/health", guarded=False, idempotent=True)
#: A 503 from ``/ready`` is an answer (not ready, and why), so it is neither retried nor raised.
READY = RequestSpec("GET", "/ready", guarded=False, ok=frozenset({200, 503}), idempotent=True)
MODELS = RequestSpec("GET", "/v1/models", idempotent=True)


def model_request(name: str) -> RequestSpec:
    return RequestSpec("GET", f"/v1/models/{quote(name, safe='')}", idempotent=True)


def decode_json(response: httpx.Response) -> Any:
    """The response's JSON body, or :class:`InvalidResponse` naming the route."""
    try:
        return response.json()
    except ValueError:
        raise InvalidResponse(
            f"the answer to {response.request.url.path} is not JSON", status=response.status_code
        ) from None


def parse_health(body: Any) -> dict[str, Any]:
    return body if isinstance(body, dict) else {"status": body}


def parse_models(body: Any) -> list[ModelInfo]:
    items = body.get("models") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise InvalidResponse("the model list has no 'models' list")
    return [ModelInfo.from_json(item) for item in items]
