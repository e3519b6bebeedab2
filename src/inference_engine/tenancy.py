"""Who a request is for, as the queues see it: its tenant, the tenant's weight, its priority.

Built once per request by the access layer (HTTP middleware, gRPC call wrapper) from the API key
and the ``X-Priority`` header / ``x-priority`` metadata, and handed to the data plane with the
request. The batch queue shares capacity between tenants by weight (deficit round-robin) and
serves higher priority classes first (:mod:`inference_engine.batching.queue`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inference_engine.errors import BadRequest

Priority = Literal["high", "normal", "low"]
#: Served in this order: a class runs only while every class before it has nothing queued.
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
#: The tenant of requests without an API key (auth off): one tenant, so first come first served.
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    """One request's place in the fair queue."""

    tenant: str = ANONYMOUS
    weight: float = 1.0
    priority: Priority = "normal"


#: Requests that name no tenant (in-process callers, label-cache work, shadows).
DEFAULT_CALLER = Caller()


def requested_priority(raw: str | None, ceiling: Priority) -> Priority:
    """The priority a request asked for (``None``: normal), lowered to ``ceiling``, the most its
    key may use; a value that is not a priority class is a 400 naming the choices."""
    if raw is None or not raw.strip():
        asked: Priority = "normal"
    else:
        word = raw.strip().lower()
        if word not in PRIORITIES:
            raise BadRequest(f"X-Priority must be one of {', '.join(PRIORITIES)}, not {raw!r}")
        asked = word
    return max(asked, ceiling, key=PRIORITIES.index)


def sha256_digests(hashes: list[str]) -> list[str]:
    """Key digests as settings hold them: hex SHA-256, lower case (a ``ValueError`` otherwise)."""
    for digest in hashes:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise ValueError("each entry must be a hex SHA-256 digest (64 hex characters)")
    return [digest.lower() for digest in hashes]


class TenantSettings(BaseModel):
    """One tenant: the API keys that act for it, its share of each model's queue and its ceiling."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    key_hashes: list[str] = Field(default_factory=list)
    """Hex SHA-256 digests of the keys that act for this tenant (accepted as API keys too)."""
    weight: float = Field(1.0, ge=0.01, le=1000)
    """Its share of each model's forward passes and queue against the other tenants with work
    queued (2 gets twice the slots of 1)."""
    max_priority: Priority = "normal"
    """The highest ``X-Priority`` its requests may use; a higher one asked for is lowered to it."""

    @field_validator("key_hashes")
    @classmethod
    def _hex_sha256(cls, hashes: list[str]) -> list[str]:
        return sha256_digests(hashes)


class FairnessSettings(BaseModel):
    """How models share their capacity between API keys (tenants) and priority classes."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    """Named tenants, each with its keys, weight and priority ceiling. A key in no tenant is a
    tenant of its own with ``default_weight``; requests without a key (auth off) share one."""
    default_weight: float = Field(1.0, ge=0.01, le=1000)
    """Weight of a key that no tenant names, and of requests without a key."""
    default_max_priority: Priority = "normal"
    """Priority ceiling of a key that no tenant names, and of requests without a key."""

    @model_validator(mode="after")
    def _one_tenant_per_key(self) -> FairnessSettings:
        owners: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            for digest in tenant.key_hashes:
                if digest in owners:
                    raise ValueError(f"key {digest[:12]}... is in tenants {owners[digest]!r} and {name!r}")
                owners[digest] = name
        return self

    def key_hashes(self) -> list[str]:
        """Every key a tenant names."""
        return [digest for tenant in self.tenants.values() for digest in tenant.key_hashes]


class Tenants:
    """Which tenant a key acts for, and the :class:`Caller` of one request."""

    def __init__(self, settings: FairnessSettings) -> None:
        self.settings = settings
        tenants = settings.tenants.items()
        self._by_key = {digest: (name, tenant) for name, tenant in tenants for digest in tenant.key_hashes}

    def caller(self, key_digest: str | None, priority: str | None = None) -> Caller:
        """The caller of a request authenticated as ``key_digest`` (None: no key) asking for
        ``priority`` (``X-Priority``). A key no tenant names is its own tenant, named by the
        first 12 hex digits of its digest (enough to tell keys apart, nothing to guess from)."""
        found = self._by_key.get(key_digest) if key_digest else None
        if found is not None:
            name, tenant = found
            return Caller(name, tenant.weight, requested_priority(priority, tenant.max_priority))
        name = f"key:{key_digest[:12]}" if key_digest else ANONYMOUS
        ceiling = self.settings.default_max_priority
        return Caller(name, self.settings.default_weight, requested_priority(priority, ceiling))
