"""A Python client for inference-engine's native HTTP API, synchronous and asynchronous.

    from inference_engine_client import InferenceClient

    with InferenceClient("http://127.0.0.1:8000") as client:
        prediction = client.predict("cat.jpg", top_k=3)
        print(prediction.top1)

Calls retry what is safe to retry (no connection, a connection lost before the answer, 429,
503, honouring ``Retry-After``) with jittered exponential backoff, send their deadline to the
server (``X-Request-Timeout-Ms``), and go through a per-client circuit breaker that fails fast
while the server keeps failing. Errors are one typed tree under :class:`InferenceError`.
Importing this package starts nothing and reads no environment. It needs only httpx and
imports nothing from the server (``pip install inference-engine-client``). See docs/client.md.
"""

from inference_engine_client._async import AsyncInferenceClient
from inference_engine_client._core import ImageInput
from inference_engine_client._sync import InferenceClient
from inference_engine_client._version import __version__
from inference_engine_client.breaker import CircuitBreaker
from inference_engine_client.errors import (
    BadInput,
    CircuitOpen,
    ConnectError,
    InferenceError,
    InvalidResponse,
    NotFound,
    Overloaded,
    ServerError,
    Timeout,
    Unauthorized,
)
from inference_engine_client.results import Embeddings, ModelInfo, Prediction, Readiness, ScoredLabel
from inference_engine_client.retry import RetryPolicy, parse_retry_after

__all__ = [
    "AsyncInferenceClient",
    "BadInput",
    "CircuitBreaker",
    "CircuitOpen",
    "ConnectError",
    "Embeddings",
    "ImageInput",
    "InferenceClient",
    "InferenceError",
    "InvalidResponse",
    "ModelInfo",
    "NotFound",
    "Overloaded",
    "Prediction",
    "Readiness",
    "RetryPolicy",
    "ScoredLabel",
    "ServerError",
    "Timeout",
    "Unauthorized",
    "__version__",
    "parse_retry_after",
]
