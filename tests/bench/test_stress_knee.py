"""bench/stress.py's pure pieces: /metrics counters, the histogram quantile, the knee, the report.

No model is loaded; one step runs against a trivial asyncio HTTP server on loopback (~0.3 s).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from bench import load, stress

# -- /metrics ------------------------------------------------------------------------------------

METRICS = """
# TYPE inference_engine_requests_total counter
inference_engine_requests_total{model="m",route="/predict",status="200"} 90.0
inference_engine_requests_total{model="m",route="/v1/models/{name}/predict",status="200"} 10.0
inference_engine_requests_total{model="m",route="/predict",status="503"} 7.0
inference_engine_requests_total{model="other",route="/predict",status="503"} 500.0
inference_engine_requests_total{model="",route="/ready",status="200"} 3.0
inference_engine_requests_created{model="m",route="/predict",status="200"} 1.7e9
inference_engine_errors_total{model="m",type="queue_full"} 7.0
inference_engine_dropped_inputs_total{model="m",reason="deadline"} 1.0
inference_engine_request_duration_seconds_bucket{le="0.1",model="m",route="/predict"} 50.0
inference_engine_request_duration_seconds_bucket{le="+Inf",model="m",route="/predict"} 97.0
inference_engine_request_duration_seconds_bucket{le="+Inf",model="m",route="/v1/models/{name}/predict"} 10.0
inference_engine_request_duration_seconds_sum{model="m",route="/predict"} 12.5
"""


def test_model_counters_pick_one_models_series_and_sum_its_routes() -> None:
    counters = stress.model_counters(METRICS, "m")
    assert counters == {
        "status:200": 100.0,
        "status:503": 7.0,
        "error:queue_full": 7.0,
        "dropped:deadline": 1.0,
        "duration_le:0.1": 50.0,
        "duration_le:+Inf": 107.0,
    }


def test_counter_delta_is_what_grew_by_label() -> None:
    before = {"status:200": 10.0, "status:503": 2.0, "error:queue_full": 2.0}
    after = {"status:200": 25.0, "status:503": 2.0, "status:429": 1.0, "error:queue_full": 2.0}
    assert stress.counter_delta(before, after, "status") == {"200": 15.0, "429": 1.0}
    assert stress.counter_delta(before, after, "error") == {}


def test_histogram_quantile_interpolates_as_prometheus_does() -> None:
    buckets = {0.1: 50.0, 0.25: 90.0, 0.5: 100.0, math.inf: 100.0}
    assert stress.histogram_quantile(0.5, buckets) == pytest.approx(0.1)  # 0 + 0.1 x 50/50
    assert stress.histogram_quantile(0.99, buckets) == pytest.approx(0.475)  # 0.25 + 0.25 x 9/10
    assert stress.histogram_quantile(0.7, buckets) == pytest.approx(0.175)  # 0.1 + 0.15 x 20/40
    # A rank in the +Inf bucket answers the highest finite bound; nothing observed is nan.
    assert stress.histogram_quantile(0.99, {0.1: 10.0, math.inf: 20.0}) == pytest.approx(0.1)
    assert math.isnan(stress.histogram_quantile(0.99, {0.1: 0.0, math.inf: 0.0}))
    assert math.isnan(stress.histogram_quantile(0.99, {}))
    assert stress.histogram_quantile(0.0, {0.1: 0.0, 0.2: 5.0, math.inf: 5.0}) == 0.0


# -- steps and the knee ---------------------------------------------------------------------------


def step(
    fraction: float, ok: int, p99: float, shed: int = 0, other: int = 0, no_answer: int = 0
) -> stress.Step:
    statuses = {200: ok, 503: shed} | ({500: other} if other else {})
    return stress.Step(
        fraction=fraction,
        offered_rps=100.0 * fraction,
        duration_s=2.0,
        scheduled=ok + shed + other + no_answer,
        statuses={k: v for k, v in statuses.items() if v},
        no_answer=no_answer,
        ok_p50_ms=p99 / 2 if ok else math.nan,
        ok_p99_ms=p99 if ok else math.nan,
        ok_max_ms=p99 if ok else math.nan,
        server={
            "ok_rps": ok / 2.0,
            "p99_all_ms": p99,
            "errors": {"queue_full": shed} if shed else {},
            "avg_batch_size": 2.0,
            "inference_ms": 50.0,  # full batches of 4 drain at 80/s
        },
    )


RAMP = [
    step(0.25, 50, 100.0),
    step(0.5, 100, 120.0),
    step(1.0, 198, 250.0, shed=2),  # 1% refused: still within
    step(1.5, 200, 280.0, shed=100),  # the knee is left by shedding; the p99 is fine
    step(3.0, 200, 300.0, shed=400),
]


def test_step_from_window_tells_refusals_from_requests_without_an_answer() -> None:
    window = load.Window("open", 50.0, 2.0, latencies_s=[0.1, 0.2, 0.3], statuses={200: 3, 503: 2, 500: 1})
    window.errors = 2 + 1 + 4  # the two 503s, the 500 and four requests that got no answer
    made = stress.step_from_window(window, 0.5, scheduled=10)
    assert (made.ok, made.shed, made.no_answer, made.other, made.total) == (3, 2, 4, 5, 10)
    assert made.not_ok_share == pytest.approx(0.7)
    assert made.goodput_rps == pytest.approx(1.5)
    assert made.ok_p99_ms == pytest.approx(298.0)
    assert made.as_dict()["statuses"] == {"200": 3, "500": 1, "503": 2}


def test_knee_is_the_last_step_before_the_first_out_of_bounds() -> None:
    knee = stress.find_knee(RAMP, bound_ms=300.0, max_not_ok=0.01)
    assert (knee.index, knee.first_over) == (2, 3)
    assert "33.3% of requests not 200" in knee.reason and "p99" not in knee.reason


def test_knee_by_latency_and_a_later_lull_does_not_move_it() -> None:
    steps = [step(0.25, 50, 100.0), step(0.5, 100, 400.0), step(0.75, 150, 150.0)]
    knee = stress.find_knee(steps, bound_ms=300.0)
    assert (knee.index, knee.first_over) == (0, 1)
    assert knee.reason == "p99 of the 200s 400 ms > bound 300 ms"


def test_knee_when_the_ramp_never_leaves_or_starts_out_of_bounds() -> None:
    assert stress.find_knee(RAMP[:3], bound_ms=300.0) == stress.Knee(300.0, 0.01, 2, None, "")
    none = stress.find_knee([step(0.25, 0, math.nan, shed=10)], bound_ms=300.0)
    assert (none.index, none.first_over, none.reason) == (None, 0, "no 200 at all")
    assert stress.find_knee([], bound_ms=1.0).index is None
    with pytest.raises(ValueError, match="increasing"):
        stress.find_knee([RAMP[1], RAMP[0]], bound_ms=300.0)


FACTS = {"max_batch_size": 4, "max_queue_size": 16, "instances": 1, "request_timeout_s": 5.0}


def test_cpu_split_leaves_the_server_and_the_generator_out_of_other_work() -> None:
    split = stress.cpu_split((10.0, 1.0, 100.0), (13.0, 1.5, 104.5), seconds=2.0)
    assert split == pytest.approx({"server_cores": 1.5, "loadgen_cores": 0.25, "other_cores": 0.5})
    # Without the server's pid its share is unknown, and counted as other work.
    alone = stress.cpu_split((math.nan, 1.0, 100.0), (math.nan, 1.5, 104.5), seconds=2.0)
    assert math.isnan(alone["server_cores"]) and alone["other_cores"] == pytest.approx(2.0)
    assert stress.cpu_split((0.0, 0.0, 0.0), (2.0, 1.0, 2.5), 1.0)["other_cores"] == 0.0  # never negative
    server, own, busy = stress.cpu_sample(os.getpid())
    assert server > 0 and own > 0 and busy > 0  # this process stands in for the server


def test_bounds() -> None:
    assert stress.latency_bound_ms(100.0, 3.0) == 300.0
    assert stress.latency_bound_ms(100.0, 3.0, fixed_ms=250.0) == 250.0
    # 16 queued + a batch of 4 in flight ahead, then its own batch of 4, at 80/s: 0.3 s.
    assert stress.queue_bound_ms(100.0, 80.0, 16, 4) == pytest.approx(400.0)
    assert stress.queue_bound_ms(100.0, 80.0, 16, 4, instances=2) == pytest.approx(100.0 + 1000 * 32 / 80)


def test_each_steps_queue_bound_is_at_the_rate_of_its_own_forward_passes() -> None:
    slow = step(2.0, 100, 900.0, shed=100)
    slow.server["inference_ms"] = 100.0  # the machine slowed the model: a full queue takes twice as long
    idle = step(0.1, 5, 100.0)
    del idle.server["inference_ms"]  # no batch ran in the window: the capacity it was given
    bounds = stress.step_queue_bounds([RAMP[0], slow, idle], 100.0, FACTS, fallback_rps=60.0)
    assert bounds == pytest.approx([400.0, 700.0, 100.0 + 1000 * 24 / 60])
    two = stress.step_queue_bounds([RAMP[0]], 100.0, {**FACTS, "instances": 2}, fallback_rps=60.0)
    assert two == pytest.approx([100.0 + 1000 * 32 / 160])  # two passes at once: twice the rate


def test_beyond_the_knee_holds_only_with_nothing_but_200_and_refusals_within_the_queue_bound() -> None:
    knee = stress.find_knee(RAMP, bound_ms=300.0)
    beyond = stress.beyond_knee(RAMP, knee, [400.0] * 5)
    assert beyond["steps"] == 2 and beyond["held"] is True
    assert beyond["shed_share"] == pytest.approx([1 / 3, 2 / 3])
    assert beyond["ok_p99_ms_max"] == 300.0 and beyond["goodput_rps"] == [100.0, 100.0]
    assert beyond["worst_ratio"] == pytest.approx(0.75)
    # Each past step against its own bound: the last one is over.
    assert stress.beyond_knee(RAMP, knee, [0.0, 0.0, 0.0, 400.0, 299.0])["held"] is False
    assert stress.beyond_knee(RAMP, knee, [0.0, 0.0, 0.0, 400.0, 299.0], slack=1.5)["held"] is True
    errors = [*RAMP[:4], step(3.0, 200, 300.0, shed=390, other=10)]
    assert stress.beyond_knee(errors, stress.find_knee(errors, 300.0), [400.0] * 5)["held"] is False
    silent = [*RAMP[:4], step(3.0, 200, 300.0, shed=390, no_answer=1)]
    assert stress.beyond_knee(silent, stress.find_knee(silent, 300.0), [400.0] * 5)["other"] == 1
    starved = [*RAMP[:4], step(3.0, 0, math.nan, shed=400)]
    assert stress.beyond_knee(starved, stress.find_knee(starved, 300.0), [400.0] * 5)["held"] is False
    never = stress.beyond_knee(RAMP[:3], stress.find_knee(RAMP[:3], 300.0), [400.0] * 3)
    assert never == {"steps": 0, "held": None}


# -- the report ------------------------------------------------------------------------------------


def test_report_renders_from_the_saved_json(tmp_path: Path) -> None:
    steps = [*RAMP, step(3.5, 0, math.nan, shed=700)]  # no 200s at all: nan p99s become "-"
    steps[-1].server |= {"server_cores": 1.0, "other_cores": 0.9}  # and a neighbour took a core
    capacity = {"clients": 8, "duration_s": 3.0, "rps": 100.0, "p50_ms": 90.0, "p99_ms": 120.0}
    facts = FACTS
    document: dict[str, Any] = {
        "workload": "colour",
        "meta": {
            "started": "2026-01-01T00:00:00+0000",
            "command": "python -m bench.stress",
            "machine": {"cores": 2, "cpu_model": "Test CPU", "load_average": [0.5, 0.4, 0.3]},
            "load_average_after": [1.5, 1.0, 0.5],
            "server": "test",
            "warmup_s": 1.0,
            "step_s": 2.0,
        },
        "server": facts,
        "capacity": capacity,
        **stress.describe(
            steps, capacity, facts, bound_factor=3.0, bound_ms=None, max_not_ok=0.01, slack=1.5
        ),
    }
    assert document["knee"]["index"] == 2 and document["knee"]["bound_ms"] == 300.0
    assert document["beyond"]["held"] is False  # the last step answered no 200 at all
    json_path, md_path = stress.write(document, tmp_path, "stress")
    saved = json.loads(json_path.read_text())
    assert saved["steps"][-1]["ok_p99_ms"] is None  # nan is not JSON
    text = md_path.read_text()
    assert text == stress.markdown(saved)
    assert "**Knee**: 100.0 req/s offered (1 x capacity)" in text
    row = "| 100.0 | 1 | 200 | 99.0 | 198 | 2 | 0 | 0 | 1.0% | 125 | 250 | 400 | 99.0 | 250 | queue_full 2 "
    assert row + "| 2.00 | - | 50 | - / - | **knee** |" in text
    assert (
        "| 350.0 | 3.5 | 700 | 0.0 | 0 | 700 | 0 | 0 | 100.0% | - | - | 400 | 0.0 | - | queue_full 700 |"
        in text
    )
    assert "**Not held.**" in text and "3 x 100 ms" in text
    assert "| 1.00 / 0.90 | past the knee (disturbed) |" in text
    assert "during 1 of 6 steps (3.5 x)" in text and "disturbed: other work" not in text
    capacity["other_cores"] = 0.5
    assert "disturbed: other work used 0.50 cores" in stress.markdown({**saved, "capacity": capacity})
    assert not stress.disturbed({"server": {"other_cores": math.nan}}) and not stress.disturbed({})


# -- one step against a trivial server ------------------------------------------------------------------


async def _alternating_server() -> asyncio.Server:
    """POSTs answered 200, 503, 200, ... (keep-alive); ``GET /metrics`` answers fixed counters."""
    answered = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = next(
                    (int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length")), 0
                )
                await reader.readexactly(length)
                if lines[0].startswith(b"GET /metrics"):
                    status, body = 200, METRICS.encode()
                else:
                    status, body = (200, b"{}") if answered % 2 == 0 else (503, b"{}")
                    answered += 1
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_a_step_accounts_for_every_request_due_in_its_window() -> None:
    server = await _alternating_server()
    port = server.sockets[0].getsockname()[1]
    requests = [load.build_request("/predict", b"x" * 10, port)]
    async with server:
        made = await stress.measure_step(
            port,
            "m",
            requests,
            200.0,
            fraction=1.0,
            warmup_s=0.05,
            duration_s=0.3,
            seed=2,
            drain_timeout_s=2.0,
        )
    assert made.scheduled == stress.scheduled_in_window(200.0, 0.05, 0.3, 2) > 30
    assert made.total == made.scheduled and made.no_answer == 0 and made.other == 0
    assert set(made.statuses) == {200, 503} and abs(made.ok - made.shed) <= made.total // 2
    # The same canned counters at both edges: nothing grew on the server's side.
    assert made.server["statuses"] == {} and made.server["errors"] == {} and made.server["ok_rps"] == 0
    assert math.isnan(made.server["p99_all_ms"]) and made.server["seconds"] >= 0.3 - 0.005  # clock grain
    assert math.isnan(made.server["server_cores"]) and made.server["loadgen_cores"] > 0
