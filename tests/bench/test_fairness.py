"""bench/fairness.py: the servers' settings, the summary and the report on canned windows, and the
script's quick mode end to end (two real servers, about 20 s): every figure produced. No timing
is asserted (a busy CI machine decides those); what fair queuing does to latency is the script's
to measure, not this test's."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import fairness


def test_each_server_has_auth_on_and_the_tenants_its_queueing_needs() -> None:
    from inference_engine.access import hash_key
    from inference_engine.server import check_settings
    from inference_engine.settings import Settings
    from inference_engine.tenancy import Tenants

    light, heavy = (hash_key(fairness.KEYS[t]) for t in ("light", "heavy"))
    callers = {}
    for queueing in fairness.QUEUEING:
        settings = Settings(**fairness.server_settings(queueing))
        check_settings(settings)  # starts: auth on with keys it accepts
        assert settings.auth.enabled and set(settings.auth.api_key_hashes) == {light, heavy}
        tenants = Tenants(settings.fairness)
        callers[queueing] = (tenants.caller(light), tenants.caller(heavy))
    fair_light, fair_heavy = callers["fair"]
    assert (fair_light.tenant, fair_heavy.tenant) == ("light", "heavy")
    assert fair_light.weight == fair_heavy.weight == 1.0
    shared_light, shared_heavy = callers["one_tenant"]
    assert shared_light.tenant == shared_heavy.tenant == "shared"


def _tenant(p50: float, p99: float, rps: float, shed: int = 0) -> dict[str, Any]:
    statuses = {"200": int(rps * 5)} | ({"503": shed} if shed else {})
    return {"p50_ms": p50, "p99_ms": p99, "throughput_rps": rps, "statuses": statuses, "errors": shed}


def _samples() -> dict[str, dict[str, list[dict[str, Any]]]]:
    server = {"avg_batch_size": 8.0}

    def alone(p50: float, p99: float) -> dict[str, Any]:
        return {"light": _tenant(p50, p99, 40), "server": server}

    def flood(light: dict[str, Any], heavy: dict[str, Any]) -> dict[str, Any]:
        return {"light": light, "heavy": heavy, "server": server}

    return {
        "fair": {
            "alone": [alone(10, 20), alone(12, 22)],
            "flood": [
                flood(_tenant(60, 80, 40), _tenant(1400, 1600, 180, 300)),
                flood(_tenant(70, 90, 40), _tenant(1300, 1500, 170, 320)),
            ],
        },
        "one_tenant": {
            "alone": [alone(10, 20)],
            "flood": [flood(_tenant(1500, 1900, 15, 30), _tenant(1200, 2000, 150, 400))],
        },
    }


def test_the_summary_compares_the_light_tenants_p99_with_its_p99_alone() -> None:
    summary = fairness.summarise(_samples())
    fair, fifo = summary["fair"]["flood"], summary["one_tenant"]["flood"]
    assert fair["light_p99_ms"] == pytest.approx(85.0) and fair["light_p99_vs_alone"] == pytest.approx(
        85.0 / 21.0
    )
    assert fair["heavy_rps"] == pytest.approx(175.0) and fair["heavy_503"] == 620 and fair["light_503"] == 0
    assert fifo["light_p99_vs_alone"] == pytest.approx(1900.0 / 20.0) and fifo["light_503"] == 30
    alone = summary["fair"]["alone"]
    assert "light_p99_vs_alone" not in alone and math.isnan(alone["heavy_rps"]) and alone["heavy_503"] == 0


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_quick_mode_measures_every_figure(tmp_path: Path) -> None:
    assert fairness.main(["--quick", "--duration", "1", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "fairness-quick.json").read_text())
    assert document["capacity"]["rps"] > 0 and document["rates"]["heavy"] == pytest.approx(
        10 * document["rates"]["light"], rel=0.01
    )
    for queueing in fairness.QUEUEING:
        for scenario in fairness.SCENARIOS:
            point = document["summary"][queueing][scenario]
            assert (
                point["runs"] == 1
                and isinstance(point["light_503"], int)
                and isinstance(point["heavy_503"], int)
            )
            if scenario == "alone" or queueing == "fair":  # the light tenant answered (first come,
                # first served, a flood may in principle refuse every one of its requests)
                assert point["light_rps"] > 0 and point["light_p99_ms"] >= point["light_p50_ms"] > 0
            if scenario == "flood":  # the heavy tenant was served, and the light one's ratio computed
                assert point["heavy_rps"] > 0 and point["heavy_p99_ms"] > 0
                assert point["light_rps"] == 0 or point["light_p99_vs_alone"] > 0
            run = document["samples"][queueing][scenario][0]
            assert run["server"]["batches"] > 0 and ("heavy" in run) == (scenario == "flood")
    text = (tmp_path / "fairness-quick.md").read_text()
    assert "The light tenant's p99 with the flood / alone:" in text
    assert text.count("| fair (two tenants, weight 1 each) |") == 2
    assert text.count("| one tenant (first come, first served) |") == 2
    assert not list(tmp_path.glob("*.log.tmp"))  # the servers' logs are removed when all went well
