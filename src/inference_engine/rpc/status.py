"""The one place where engine errors become gRPC status codes and trailing metadata.

The same :class:`~inference_engine.errors.EngineError` that REST answers with an HTTP status is
answered here with the gRPC code the gRPC world expects for it (the mapping Triton, KServe and
Google's API guidelines use: 404 -> NOT_FOUND, 503 -> UNAVAILABLE, 429 -> RESOURCE_EXHAUSTED...),
the same message, and the same hints as metadata: ``retry-after`` (seconds, as the HTTP header),
``grpc-retry-pushback-ms`` (which gRPC's own retry policy honours) and a ``google.rpc.RetryInfo``
in the standard status details, for clients that read those.
"""

from __future__ import annotations

from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import StatusCode

from inference_engine.errors import EngineError

Metadata = tuple[tuple[str, str | bytes], ...]

#: By HTTP status; the engine's errors each carry one.
_BY_STATUS: dict[int, StatusCode] = {
    400: StatusCode.INVALID_ARGUMENT,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.NOT_FOUND,
    413: StatusCode.RESOURCE_EXHAUSTED,  # as gRPC itself answers a message over its limit
    415: StatusCode.INVALID_ARGUMENT,
    422: StatusCode.INVALID_ARGUMENT,
    429: StatusCode.RESOURCE_EXHAUSTED,
    499: StatusCode.CANCELLED,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.DEADLINE_EXCEEDED,
}
#: The HTTP status of a call that ended without an engine error (OK, or cancelled by the client
#: or its deadline), for the ``status`` label of the request metrics; a call that failed with
#: an engine error gets that error's own status. One set of dashboards and alerts
#: (``status=~"5.."``) thus covers both transports.
_HTTP_STATUS: dict[StatusCode, int] = {
    StatusCode.OK: 200,
    StatusCode.CANCELLED: 499,
    StatusCode.DEADLINE_EXCEEDED: 504,
}


def status_code(exc: EngineError) -> StatusCode:
    """The gRPC code for ``exc``; anything the table does not name is INTERNAL."""
    return _BY_STATUS.get(exc.status_code, StatusCode.INTERNAL)


def http_status(code: StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


def error_metadata(exc: EngineError) -> Metadata:
    """Trailing metadata for ``exc``: its retry hints (as metadata and as RetryInfo) and its
    rate-limit figures (``x-ratelimit-*``), in lower case as gRPC requires."""
    pairs: list[tuple[str, str | bytes]] = [
        (name.lower(), value) for name, value in exc.headers.items() if name.lower() != "www-authenticate"
    ]
    retry_after = exc.headers.get("Retry-After")
    if retry_after is not None:
        seconds = int(retry_after)
        pairs.append(("grpc-retry-pushback-ms", str(seconds * 1000)))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)))
        details = status_pb2.Status(code=status_code(exc).value[0], message=exc.message, details=[detail])
        pairs.append(("grpc-status-details-bin", details.SerializeToString()))
    return tuple(pairs)
