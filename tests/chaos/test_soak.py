"""Soak: a steady mixed load on a real server leaves memory, descriptors, threads and tasks flat.

Runs ``SOAK_SECONDS`` seconds (20 by default, the short version in ``make test``; ``make soak``
runs 600). Every answer must be the documented one for its request, and after the warm-up
(the first 30 %) the server's own gauges, sampled from ``/metrics``, must not trend upward
(``tests/chaos/soak.py`` has the bounds and why). With ``SOAK_REPORT`` set, the figures go there
as JSON; ``pytest -s`` prints a summary. See docs/OPERATIONS.md#soak.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.chaos.soak import Bounds, RequestMix, log_levels, run_soak, violations, write_report
from tests.helpers import ServerProcess
from tests.repository import add_colour_model, add_colour_text_model

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "20"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "4"))
WARMUP_FRACTION = 0.3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(int(SOAK_SECONDS) + 180)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("soak")
    add_colour_model(repo, "colour")
    # A small label cache, so that it is full early and evicts for the rest of the run.
    add_colour_text_model(repo, "colours", label_cache_size=64)
    # The access log stays on (a log line per request is part of the steady state) but goes to
    # a file, not a pipe that nobody reads.
    process = ServerProcess(repo)
    process.start(tmp_path_factory.mktemp("soak-logs") / "server.log")
    yield process
    process.stop()


def test_steady_mixed_load_leaves_resources_flat(server: ServerProcess) -> None:
    info = httpx.get(f"{server.url}/info", timeout=10).raise_for_status().json()
    max_text_chars = int(info["config"]["server"]["max_text_chars"])
    mix = RequestMix(classifier="colour", zero_shot="colours", max_text_chars=max_text_chars)

    result = run_soak(server.url, mix, SOAK_SECONDS, clients=CLIENTS, warmup_fraction=WARMUP_FRACTION)

    bounds = Bounds.for_run(SOAK_SECONDS * (1 - WARMUP_FRACTION), CLIENTS)
    report = result.report(bounds)
    # Documented errors are logged at INFO (the access line); a warning or an error means the
    # server met something it did not expect, whatever the client was answered.
    levels = log_levels(server.log())
    report["server_log_levels"] = dict(levels)
    if path := os.environ.get("SOAK_REPORT"):
        write_report(Path(path), report)
    print("\n" + result.summary() + f"\n  server log records by level: {dict(levels)}")

    assert all(sum(result.statuses[kind].values()) > 0 for kind in mix.kinds), report["statuses"]
    problems = violations(result, bounds)
    assert not problems, "\n".join(problems)
    assert set(levels) <= {"INFO", "DEBUG"}, f"server log: {dict(levels)}"
