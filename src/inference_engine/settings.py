"""Typed server configuration and the layered loader that builds it.

Layers, lowest to highest precedence: field defaults < ``configs/base.yaml`` <
``configs/<env>.yaml`` < an extra ``--config`` file < ``IE_*`` environment variables <
command-line flags. Layers merge key by key (a nested key overrides only itself), and every
value remembers where it came from, so ``config show`` can say it and a bad value can be
reported with its source.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from inference_engine.errors import ConfigError
from inference_engine.tenancy import FairnessSettings, sha256_digests

ENV_PREFIX = "IE_"
ENV_NESTED_DELIMITER = "__"
DEFAULT_SOURCE = "default"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    """Address to bind. Use 0.0.0.0 inside containers."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free port)."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Deadline for one inference request, from arrival to answer; past it the answer is 504."""
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0)
    """Largest accepted request body; enforced while the body streams in (413 past it)."""
    max_request_timeout_s: float = Field(120.0, gt=0)
    """Cap on a client's own deadline (header ``X-Request-Timeout-Ms``)."""
    preprocess_workers: int = Field(0, ge=0)
    """Threads that decode and pre-process images; 0 means one per CPU core."""
    workers: int = Field(1, ge=1, le=64)
    """Server processes on the port, each with its own models, queues and decode pool (the kernel
    spreads connections across them). Above 1 for light models bound by one process's GIL
    (docs/OPERATIONS.md): N copies of every model in memory, metrics summed across workers,
    in-memory rate limits per worker, model control refused."""
    drain_timeout_s: float = Field(20.0, ge=0)
    """On shutdown, how long queued and running requests may take to finish."""
    shutdown_delay_s: float = Field(0.0, ge=0)
    """After SIGTERM, how long the listener stays open, answering new requests 503 ``shutting_down``
    with ``Connection: close``, so a load balancer takes the instance out before connections are
    refused; part of ``drain_timeout_s``, which bounds it."""
    default_model: str | None = None
    """Model served by ``POST /predict``; unset means the first model in name order."""
    max_items_per_request: int = Field(64, ge=1, le=4096)
    """Images or texts one embedding request may carry; each is batched like a single request."""
    max_labels_per_request: int = Field(256, ge=1, le=10_000)
    """Zero-shot labels one request may bring."""
    max_text_chars: int = Field(2000, ge=1, le=1_000_000)
    """Longest accepted text or label, in characters (the model truncates to its own context)."""
    playground: bool = True
    """Serve the browser playground at ``/`` and ``/playground`` (off in the prod config)."""
    header_timeout_s: float = Field(10.0, gt=0)
    """How long a request's headers may take, from their first byte to their end, however slowly
    they trickle in (slowloris); past it the client gets 408 and the connection is closed."""
    keep_alive_timeout_s: int = Field(5, ge=1)
    """Whole seconds an idle connection is kept open (after an answer, or once accepted with nothing
    sent), and the most the rest of a body answered early (504, 413) may take to arrive."""
    send_timeout_s: float = Field(60.0, gt=0)
    """How long an answer may wait for a client that reads none of it (the buffers full); past it
    the connection is dropped, so a client that stops reading cannot hold it for ever."""
    max_connections: int = Field(1000, ge=1)
    """Connections served at once; a request on one more (or while more requests than this are in
    progress) gets an immediate 503 from the HTTP layer instead of waiting."""
    model_control: bool = False
    """Accept model control (``POST /v2/repository/models/{name}/load`` and ``/unload``): load,
    reload and unload models and versions without a restart. With auth on, it needs an admin
    key (``auth.admin_key_hashes``). On in the dev config, off in prod."""
    repository_poll_s: float = Field(0.0, ge=0)
    """Re-read the model repository this often (seconds) and load every served model whose folder
    changed (Triton's poll mode); 0: only on start and through model control."""
    shadow_max_in_flight: int = Field(32, ge=0)
    """Shadow copies (``shadow`` in model.yaml) running at once; past it copies are shed, so a
    shadow never takes the capacity callers wait for."""


class GrpcSettings(_Section):
    enabled: bool = True
    """Also serve the Open Inference Protocol V2 over gRPC (``inference.GRPCInferenceService``,
    with the ``grpc.health.v1`` health service and server reflection) on ``port``, beside HTTP,
    on the same host, event loop, batchers and drain. Off in the test config."""
    port: int = Field(8001, ge=0, le=65535)
    """TCP port of the gRPC listener (Triton's 8001; 0 picks a free port, logged at start)."""
    max_message_bytes: int | None = Field(None, gt=0)
    """Largest gRPC request message accepted (RESOURCE_EXHAUSTED past it); unset means
    ``server.max_body_bytes``, so both transports take the same requests."""


class BatchingSettings(_Section):
    """Defaults for every model; a model's ``model.yaml`` may override each of them."""

    max_batch_size: int = Field(8, ge=1, le=4096)
    """Largest batch handed to one forward pass."""
    max_batch_delay_ms: float = Field(20.0, ge=0)
    """How long a batch may wait for more items after its first item arrived (the ceiling of the
    adaptive delay; with ``batch_delay: fixed``, a few ms is typical)."""
    max_queue_size: int = Field(256, ge=1)
    """Requests that may wait per model; past it new requests get 503 with Retry-After."""
    batch_delay: Literal["fixed", "adaptive"] = "adaptive"
    """``fixed``: a forming batch waits up to ``max_batch_delay_ms`` for more inputs while any is
    being decoded. ``adaptive``: it waits (up to the same ceiling) only while inputs arrive
    faster than the per-batch part of a forward pass, or while the batch loop is saturated;
    otherwise it runs at once. One setting then suits a lone client, medium load and a backlog."""
    admission: Literal["predictive", "queue_only"] = "predictive"
    """``predictive``: refuse at once (503 ``deadline_unmeetable`` with Retry-After) an input
    that the work ahead of it and the measured forward times say would be answered after its
    deadline; ``queue_only``: refuse only when the queue is full (it may then time out, 504)."""


class ImageSettings(_Section):
    max_pixels: int = Field(40_000_000, gt=0)
    """Largest width x height accepted; checked from the header before the full decode."""
    min_width: int = Field(8, ge=1)
    """Smallest accepted image width in pixels."""
    min_height: int = Field(8, ge=1)
    """Smallest accepted image height in pixels."""
    max_width: int = Field(16384, ge=1)
    """Largest accepted image width in pixels."""
    max_height: int = Field(16384, ge=1)
    """Largest accepted image height in pixels."""

    @model_validator(mode="after")
    def _min_below_max(self) -> ImageSettings:
        if self.min_width > self.max_width:
            raise ValueError("min_width must not exceed max_width")
        if self.min_height > self.max_height:
            raise ValueError("min_height must not exceed max_height")
        return self


class AuthSettings(_Section):
    enabled: bool = False
    """Require an API key (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``)."""
    api_key_hashes: list[str] = Field(default_factory=list)
    """Hex SHA-256 digests of the accepted keys (``inference-engine auth hash-key KEY``)."""
    protect_operational: bool = False
    """Also require a key for the probes (``/health``, ``/ready``, ``/v2/health/*``) and ``/metrics``."""
    admin_key_hashes: list[str] = Field(default_factory=list)
    """Hex SHA-256 digests of the keys allowed model control (``/v2/repository/...``); they are
    accepted on every other route too. Other keys get 403 there."""

    @field_validator("api_key_hashes", "admin_key_hashes")
    @classmethod
    def _hex_sha256(cls, hashes: list[str]) -> list[str]:
        return sha256_digests(hashes)


class RateLimitOverride(_Section):
    rate: float = Field(gt=0)
    """Requests per second refilled into this key's bucket."""
    burst: int = Field(ge=1)
    """Bucket size: requests allowed at once after idling."""


class RateLimitSettings(_Section):
    enabled: bool = False
    """Limit requests per API key (or per client address when auth is off) with token buckets."""
    rate: float = Field(10.0, gt=0)
    """Requests per second refilled into each client's bucket."""
    burst: int = Field(20, ge=1)
    """Bucket size: how many requests a client may send at once after idling."""
    overrides: dict[str, RateLimitOverride] = Field(default_factory=dict)
    """Per-key limits, keyed by the key's hex SHA-256 digest."""
    max_clients: int = Field(100_000, ge=1)
    """Buckets kept in memory; the least recently seen client is forgotten past it."""
    backend: Literal["memory", "redis"] = "memory"
    """Where buckets live: ``memory`` (per process, so N replicas allow N times the limit) or
    ``redis`` (one bucket per key shared by every replica using ``redis_url``)."""
    redis_url: str | None = None
    """Redis for ``backend: redis``, e.g. ``redis://:password@redis:6379/0`` (``rediss://`` for TLS)."""
    redis_timeout_s: float = Field(0.1, gt=0, le=5)
    """Longest wait for Redis per request (connect or answer); past it the fail mode applies."""
    redis_max_connections: int = Field(16, ge=1, le=1024)
    """Connections each process keeps to Redis; a burst beyond it waits for a free one (within
    ``redis_timeout_s``) instead of opening more."""
    fail_open: bool = True
    """With Redis unreachable: serve unlimited (true; counted and logged) or refuse with 503 (false)."""
    redis_retry_interval_s: float = Field(1.0, gt=0)
    """After a Redis failure, requests skip Redis (fail mode at once) for this long, then retry."""
    redis_key_prefix: str = "inference-engine:ratelimit:"
    """Prefix of the bucket keys, so several deployments can share one Redis."""

    @model_validator(mode="after")
    def _redis_needs_url(self) -> RateLimitSettings:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend 'redis' needs redis_url (e.g. redis://redis:6379/0)")
        return self


class UrlSettings(_Section):
    enabled: bool = False
    """Accept ``{"url": ...}`` bodies: the server fetches the image itself."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Host names that may be fetched (exact, or ``*.example.com``); empty allows any host."""
    allow_private_networks: bool = False
    """Allow private, loopback and link-local addresses (never cloud metadata addresses)."""
    connect_timeout_s: float = Field(3.0, gt=0)
    """Seconds to connect to the image host."""
    read_timeout_s: float = Field(10.0, gt=0)
    """Seconds the whole download may take."""
    max_bytes: int = Field(20 * 1024 * 1024, gt=0)
    """Largest image fetched; the download stops past it (413)."""
    max_redirects: int = Field(3, ge=0)
    """Redirects followed, each re-checked against the rules above."""


class WatchdogSettings(_Section):
    enabled: bool = True
    """Watch batch loops and forward passes; restart a model whose loop died or hangs."""
    max_forward_s: float = Field(60.0, gt=0)
    """A forward pass running longer is treated as hung: the model turns not-ready and restarts."""
    check_interval_s: float = Field(0.5, gt=0)
    """How often the watchdog looks."""
    retry_backoff_s: float = Field(1.0, gt=0)
    """Wait before reloading a model whose reload failed; doubles with each failure in a row."""
    max_retry_backoff_s: float = Field(60.0, gt=0)
    """The longest wait between two reload attempts."""
    max_failed_recoveries: int = Field(3, ge=0)
    """Failed reloads in a row after which ``/health`` (liveness) fails, so the orchestrator
    replaces the process (a hung copy may hold memory a reload needs); 0 never fails it."""


class TracingSettings(_Section):
    enabled: bool = False
    """Export OpenTelemetry traces (needs the extra: ``pip install 'inference-engine[tracing]'``)."""
    exporter: Literal["otlp", "console"] = "otlp"
    """``otlp`` (OTLP over HTTP to ``otlp_endpoint``) or ``console`` (spans printed to stdout)."""
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """Where the OTLP exporter sends spans (a collector, Jaeger, Tempo...)."""
    service_name: str = "inference-engine"
    """``service.name`` resource attribute of every span."""
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Share of new traces recorded; a sampled parent from the client is always followed."""


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level written."""
    format: Literal["json", "text"] = "text"
    """``json`` (one object per line, for log shippers) or ``text`` (for people)."""
    access_log: bool = True
    """Write one line per HTTP request (request id, model, status, duration, batch size)."""


class Settings(BaseSettings):
    """The whole server configuration. Every field is documented; ``config show`` prints it."""

    model_config = SettingsConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
    )

    env: Literal["dev", "prod", "test"] = "dev"
    """Which environment file was layered on top of ``base.yaml``."""
    model_repository: Path = Path("models")
    """Folder with one sub-folder per model, each holding a ``model.yaml``."""
    models: list[str] = Field(default_factory=list)
    """Names of the models to serve; empty serves every model in the repository."""
    torch_threads: int = Field(0, ge=0)
    """Intra-op threads for torch; 0 leaves torch's default (one per core)."""
    server: ServerSettings = Field(default_factory=ServerSettings)
    """HTTP server and request handling."""
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    """The gRPC listener (Open Inference Protocol V2)."""
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    """Dynamic batching defaults."""
    images: ImageSettings = Field(default_factory=ImageSettings)
    """Input image limits."""
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    """Log level and format."""
    auth: AuthSettings = Field(default_factory=AuthSettings)
    """API keys."""
    fairness: FairnessSettings = Field(default_factory=FairnessSettings)
    """Tenants and priority classes."""
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    """Per-client request rate limits."""
    urls: UrlSettings = Field(default_factory=UrlSettings)
    """Fetching images by URL (off by default)."""
    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings)
    """Hung or dead batch loops."""
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    """OpenTelemetry tracing."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Construction takes only explicit values: the layered loader below reads the
        # environment itself, so it knows where each value came from.
        return (init_settings,)


@dataclass
class LoadedSettings:
    """Validated settings plus the source of every leaf value (dotted key -> source)."""

    settings: Settings
    sources: dict[str, str] = field(default_factory=dict)

    def items(self) -> Iterator[tuple[str, Any, str]]:
        """Every leaf as ``(dotted key, value, source)``, in declaration order."""
        for key, value in _flatten(self.settings.model_dump(mode="json")).items():
            yield key, value, self.sources.get(key, DEFAULT_SOURCE)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _merge(
    target: dict[str, Any],
    layer: Mapping[str, Any],
    source: str,
    sources: dict[str, str],
    prefix: str = "",
) -> None:
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        current = target.get(key)
        if isinstance(value, Mapping):
            # Sections remember the last layer that touched them, so an error about a whole
            # section (a misspelt one, or a check across two of its keys) can name its source.
            sources[dotted] = source
        if isinstance(value, Mapping) and isinstance(current, dict):
            _merge(current, value, source, sources, f"{dotted}.")
        elif isinstance(value, Mapping):
            target[key] = {}
            _merge(target[key], value, source, sources, f"{dotted}.")
        else:
            target[key] = value
            sources[dotted] = source


def read_yaml_layer(path: Path) -> dict[str, Any]:
    """Read one YAML layer; an empty file is an empty layer."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    if "env" in data:
        raise ConfigError(
            f"{path}: 'env' picks which file is read, so it cannot be set in one; use --env or IE_ENV"
        )
    return data


def read_env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse ``IE_*`` variables (``__`` nests, JSON values allowed) with pydantic-settings."""
    source = EnvSettingsSource(
        Settings,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
    )
    source.env_vars = {k.lower(): v for k, v in environ.items()}
    try:
        return dict(source())
    except SettingsError as exc:
        match = re.search(r'field "(\w+)"', str(exc))
        name = _env_var_name(match.group(1)) if match else f"{ENV_PREFIX}*"
        value = next((v for k, v in environ.items() if k.upper() == name), None)
        raise ConfigError(
            f"invalid configuration:\n  {name} = {value!r}: not valid JSON for a structured setting "
            f"(from environment variable {name})"
        ) from None


def _env_var_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", ENV_NESTED_DELIMITER).upper()


def load_settings(
    *,
    config_dir: Path = Path("configs"),
    env: str | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedSettings:
    """Build settings from every layer; raise :class:`ConfigError` naming key, value and source.

    ``env`` defaults to ``IE_ENV`` or ``dev``. ``overrides`` are command-line values as a nested
    mapping (``{"server": {"port": 9000}}``).
    """
    environ = os.environ if environ is None else environ
    env_layer = read_env_layer(environ)
    env_name = env or str(env_layer.get("env") or "dev")

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    base_file = config_dir / "base.yaml"
    if base_file.is_file():
        _merge(merged, read_yaml_layer(base_file), str(base_file), sources)
    env_file = config_dir / f"{env_name}.yaml"
    if env_file.is_file():
        _merge(merged, read_yaml_layer(env_file), str(env_file), sources)
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"--config {config_file}: no such file")
        _merge(merged, read_yaml_layer(config_file), str(config_file), sources)
    _merge(merged, env_layer, "environment variables", sources)
    for dotted in _flatten(env_layer):
        sources[dotted] = f"environment variable {_env_var_name(dotted)}"
    _merge(
        merged,
        {"env": env_name},
        "command line" if env else sources.get("env", DEFAULT_SOURCE),
        sources,
    )
    if overrides:
        _merge(merged, overrides, "command line", sources)

    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
    return LoadedSettings(settings=settings, sources=sources)


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        dotted = ".".join(loc)
        # A list item's error (models.0) is reported against the list's own source.
        source = next(
            (sources[".".join(loc[:n])] for n in range(len(loc), 0, -1) if ".".join(loc[:n]) in sources),
            DEFAULT_SOURCE,
        )
        if error["type"] == "extra_forbidden":
            lines.append(f"  {dotted}: unknown key (from {source})")
        else:
            lines.append(f"  {dotted} = {error.get('input')!r}: {error['msg']} (from {source})")
    return "\n".join(lines)
