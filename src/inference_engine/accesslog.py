"""What every answered request leaves behind, whatever its transport: the request metrics (with
a ``protocol`` label) and one access log line."""

from __future__ import annotations

import logging
from typing import Any, Literal

from inference_engine.logging import RequestContext
from inference_engine.metrics import Metrics
from inference_engine.tenancy import DEFAULT_CALLER

access_logger = logging.getLogger("inference_engine.access")

TransportName = Literal["http", "grpc"]


def record_request(
    metrics: Metrics,
    ctx: RequestContext,
    *,
    protocol: TransportName,
    route: str,
    status: int,
    elapsed: float,
    log_line: bool,
    fields: dict[str, Any],
) -> None:
    """Count the request and, when ``log_line``, log it: ``fields`` first (method, path...), then
    the status, duration and what the request context learnt (model, version, batch, cache,
    tenant and priority when not the defaults, error). Tenants are in the log, not in metric
    labels: their number is the operator's, not bounded by the server."""
    model, version = ctx.model or "", ctx.version or ""
    metrics.requests.labels(model, version, route, str(status), protocol).inc()
    metrics.request_duration.labels(model, version, route, protocol).observe(elapsed)
    if ctx.error is not None:
        metrics.errors.labels(model, version, ctx.error).inc()
    if not log_line:
        return
    line: dict[str, Any] = {**fields, "status": status, "duration_ms": round(elapsed * 1000, 2)}
    if ctx.model:
        line["model"] = ctx.model
    if ctx.version:
        line["version"] = ctx.version
    if ctx.batch_size is not None:
        line["batch_size"] = ctx.batch_size
    if ctx.cached is not None:
        line["cache"] = "hit" if ctx.cached else "miss"
    if ctx.caller != DEFAULT_CALLER:
        line["tenant"], line["priority"] = ctx.caller.tenant, ctx.caller.priority
    if ctx.error is not None:
        line["error"] = ctx.error
    access_logger.info("request", extra=line)
