"""Who a request is for: the key's tenant, its weight, and the priority it may use."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inference_engine.access import AccessPolicy, hash_key
from inference_engine.errors import BadRequest, Unauthorized
from inference_engine.settings import AuthSettings, RateLimitSettings
from inference_engine.tenancy import (
    ANONYMOUS,
    FairnessSettings,
    Tenants,
    TenantSettings,
    requested_priority,
)

GOLD_KEY = "gold-secret"
PLAIN_KEY = "plain-secret"


def fairness() -> FairnessSettings:
    return FairnessSettings(
        tenants={"gold": TenantSettings(key_hashes=[hash_key(GOLD_KEY)], weight=4, max_priority="high")},
        default_weight=1.0,
        default_max_priority="normal",
    )


def test_priority_defaults_to_normal_and_is_lowered_to_the_ceiling() -> None:
    assert requested_priority(None, "high") == "normal"
    assert requested_priority(" HIGH ", "high") == "high"
    assert requested_priority("high", "normal") == "normal"
    assert requested_priority("low", "high") == "low"
    assert requested_priority("normal", "low") == "low"
    with pytest.raises(BadRequest, match="one of high, normal, low"):
        requested_priority("urgent", "high")


def test_a_named_tenant_gets_its_weight_and_ceiling() -> None:
    tenants = Tenants(fairness())
    caller = tenants.caller(hash_key(GOLD_KEY), "high")
    assert (caller.tenant, caller.weight, caller.priority) == ("gold", 4.0, "high")


def test_a_key_in_no_tenant_is_its_own_and_requests_without_a_key_share_one() -> None:
    tenants = Tenants(fairness())
    digest = hash_key(PLAIN_KEY)
    plain = tenants.caller(digest, "high")
    assert plain.tenant == f"key:{digest[:12]}" and plain.priority == "normal" and plain.weight == 1.0
    assert tenants.caller(None).tenant == ANONYMOUS


def test_a_key_in_two_tenants_is_refused_at_start_up() -> None:
    digest = hash_key(GOLD_KEY)
    with pytest.raises(ValidationError, match="is in tenants 'a' and 'b'"):
        FairnessSettings(
            tenants={"a": TenantSettings(key_hashes=[digest]), "b": TenantSettings(key_hashes=[digest])}
        )
    with pytest.raises(ValidationError, match="SHA-256"):
        TenantSettings(key_hashes=["not-a-digest"])


async def test_access_accepts_tenant_keys_and_names_the_caller() -> None:
    policy = AccessPolicy.from_settings(
        AuthSettings(enabled=True, api_key_hashes=[hash_key(PLAIN_KEY)]),
        RateLimitSettings(),
        None,
        fairness(),
    )
    grant = await policy.check(GOLD_KEY, "10.0.0.1", operational=False, admin=False, priority="high")
    assert grant.caller.tenant == "gold" and grant.caller.priority == "high"
    grant = await policy.check(PLAIN_KEY, "10.0.0.1", operational=False, admin=False, priority="high")
    assert grant.caller.tenant.startswith("key:") and grant.caller.priority == "normal"
    with pytest.raises(Unauthorized):
        await policy.check("wrong", "10.0.0.1", operational=False, admin=False)
    with pytest.raises(BadRequest):
        await policy.check(GOLD_KEY, "10.0.0.1", operational=False, admin=False, priority="asap")
    # Probes never fail on a priority header they do not use.
    probe = await policy.check(None, "10.0.0.1", operational=True, admin=False, priority="asap")
    assert probe.decision is None
