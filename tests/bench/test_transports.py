"""The transport comparison's pure pieces: what each transport sends (decoded by the server's own
codecs), the closed loop over any client, and the report's transport table and plot.

No model is loaded and no server started; the loop runs against a trivial asyncio HTTP server
and a fake client for well under a second.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from bench.transports import BASELINE, MULTIPART_BOUNDARY, TRANSPORTS, Target

from bench import report, run, transports

JPEG = b"\xff\xd8\xff\xe0fake-jpeg-bytes\xff\xd9"


# -- requests ---------------------------------------------------------------------------------------


def test_multipart_body_carries_the_jpeg_as_the_file_part() -> None:
    body = transports.multipart_body(JPEG)
    head = f"Content-Type: multipart/form-data; boundary={MULTIPART_BOUNDARY}\r\n\r\n".encode()
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    (part,) = message.iter_parts()
    assert part.get_param("name", header="content-disposition") == "file"
    assert part.get_content_type() == "image/jpeg"
    assert part.get_payload(decode=True) == JPEG


def test_v2_binary_body_is_what_the_servers_rest_codec_reads_as_one_image() -> None:
    from inference_engine.v2codec import decode_request

    body, json_size = transports.v2_binary_body(JPEG)
    header = json.loads(body[:json_size])
    assert header["inputs"] == [
        {
            "name": "image",
            "shape": [1],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": len(JPEG) + 4},
        }
    ]
    request = decode_request(body, str(json_size))
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.elements, tensor.raw) == ("image", "BYTES", [JPEG], True)
    assert request.binary_output  # no outputs named: all of them in binary, as tritonclient asks


def test_grpc_request_is_what_the_servers_grpc_codec_reads_as_one_image() -> None:
    from inference_engine.rpc.codec import infer_request
    from inference_engine.rpc.proto import grpc_predict_v2_pb2 as pb

    message = pb.ModelInferRequest.FromString(transports.grpc_request("m", JPEG))
    assert message.model_name == "m" and list(message.inputs[0].shape) == [1]
    (tensor,) = infer_request(message).inputs
    assert (tensor.name, tensor.datatype, tensor.elements) == ("image", "BYTES", [JPEG])


def test_every_transport_has_requests_a_description_and_a_label() -> None:
    built = transports.targets("m", "/predict", [JPEG, JPEG + b"x"], 8000, 8001)
    assert list(built) == list(TRANSPORTS) and TRANSPORTS[0] == BASELINE
    assert set(transports.DESCRIPTIONS) == set(TRANSPORTS) == set(report.TRANSPORT_LABELS)
    multipart, jpeg, v2 = built["rest_multipart"], built["rest_jpeg"], built["rest_v2_binary"]
    assert multipart.requests[0].startswith(b"POST /predict HTTP/1.1\r\n")
    assert b"multipart/form-data; boundary=" in multipart.requests[0]
    assert jpeg.requests[1].endswith(b"\r\n\r\n" + JPEG + b"x")
    assert v2.requests[0].startswith(b"POST /v2/models/m/infer HTTP/1.1\r\n")
    json_size = transports.v2_binary_body(JPEG)[1]
    assert f"Inference-Header-Content-Length: {json_size}\r\n".encode() in v2.requests[0]
    assert built["grpc"].request_bytes < jpeg.request_bytes + 64  # a few bytes of framing


def test_transport_workloads_run_by_default_and_one_in_quick_mode() -> None:
    names = [f"{model}@transports" for model in ("tiny_cnn", "efficientnet_lite0")]
    assert all(name in run.DEFAULT_WORKLOADS for name in names)
    assert "efficientnet_lite0@transports" in run.QUICK_WORKLOADS
    for name in names:
        workload = run.WORKLOADS[name]
        assert workload.transports and workload.twin == name.partition("@")[0]
        assert run.QUICK_PLAN.concurrency(workload) == run.DEFAULT_PLAN.concurrency(workload) == (1, 32)


# -- the closed loop ------------------------------------------------------------------------------------


async def test_closed_loop_drives_a_rest_transport_and_hooks_the_window() -> None:
    from tests.bench.test_bench import _tiny_server

    server = await _tiny_server()
    port = server.sockets[0].getsockname()[1]
    target = Target(
        "rest_jpeg", port, 0, tuple(transports.http_requests("rest_jpeg", "m", "/p", [JPEG], port))
    )
    marks: list[str] = []

    async def mark() -> None:
        marks.append("edge")

    async with server:
        window = await transports.closed_loop(target, 3, 0.05, 0.3, mark, mark)
    result = window.result()
    assert marks == ["edge", "edge"]
    assert (
        result["requests"] > 10
        and result["errors"] == 0
        and result["statuses"] == {"200": result["requests"]}
    )
    assert result["loadgen_cpu_us_per_request"] > 0


async def test_grpc_style_statuses_count_ok_as_answers_and_the_rest_as_errors() -> None:
    calls: list[bytes] = []

    class Fake:
        async def call(self, request: bytes) -> str:
            await asyncio.sleep(0.002)  # a real call waits for its answer
            calls.append(request)
            return "OK" if len(calls) % 2 else "UNAVAILABLE"

        async def close(self) -> None:
            calls.append(b"closed")

    async def opener(_: Target) -> Fake:
        return Fake()

    target = Target("grpc", 0, 0, (b"a", b"b"))
    window = await transports.closed_loop(target, 1, 0.0, 0.05, opener=opener)
    result = window.result()
    assert calls[-1] == b"closed" and set(calls[:-1]) == {b"a", b"b"}
    assert set(result["statuses"]) == {"OK", "UNAVAILABLE"}
    assert (
        result["errors"] == result["statuses"]["UNAVAILABLE"]
        and result["requests"] == result["statuses"]["OK"]
    )


# -- the report -------------------------------------------------------------------------------------------


def _run(rps: float, p50: float, p99: float, cpu: float) -> dict[str, Any]:
    return {
        "kind": "closed", "level": 1, "duration_s": 4.0, "requests": int(rps * 4), "errors": 0,
        "throughput_rps": rps, "p50_ms": p50, "p95_ms": p99 * 0.9, "p99_ms": p99, "max_ms": p99 * 1.2,
        "mean_ms": p50, "loadgen_cpu_cores": 0.1, "loadgen_cpu_us_per_request": 100.0,
        "server_cpu_cores": cpu, "avg_batch_size": 1.0, "queue_wait_ms": 0.1, "preprocess_ms": 2.0,
        "inference_ms": 10.0, "batches": 10, "batch_histogram": {},
    }  # fmt: skip


#: (throughput @32, p50 @1, server CPU cores @32) per transport: gRPC 10% faster than multipart,
#: its 1-client p50 80% of multipart's.
FIGURES = {
    "rest_multipart": (60.0, 20.0, 2.0),
    "rest_jpeg": (62.0, 19.0, 2.0),
    "rest_v2_binary": (63.0, 18.0, 2.0),
    "grpc": (66.0, 16.0, 1.98),
}


def transport_results() -> dict[str, Any]:
    points = []
    for clients in (1, 32):
        for name, (rps, p50, cpu) in FIGURES.items():
            if clients == 1:
                runs = [_run(50.0, p50, p50 * 1.5, 1.0), _run(50.0, p50 + 1.0, p50 * 1.5, 1.0)]
            else:
                runs = [_run(rps - 1, 500.0, 600.0, cpu), _run(rps + 1, 520.0, 620.0, cpu)]
            points.append({"clients": clients, "transport": name, "runs": runs})
    entry = {
        "name": "efficientnet_lite0@transports", "model": "efficientnet_lite0", "images": "photos640",
        "description": "test", "model_yaml": {}, "server_env": {}, "seconds": 60.0,
        "served": {
            "baseline": BASELINE, "clients": [1, 32], "cold_start_s": 3.0, "peak_rss_mb": 400.0,
            "transports": {name: {"description": transports.DESCRIPTIONS[name],
                                  "request_bytes": 70_000.0 + 200 * i} for i, name in enumerate(TRANSPORTS)},
            "answers": {name: {"index": 281, "score": 0.53125} for name in TRANSPORTS},
            "points": points,
        },
    }  # fmt: skip
    return {
        "meta": {
            "started": "2026-01-01T00:00:00+0000", "mode": "quick", "duration_s": 60.0,
            "machine": {"cores": 2, "cpu_model": "Test CPU", "memory_gb": 8.0,
                        "load_average": [0.1, 0.2, 0.3]},
            "load_average_after": [0.4, 0.5, 0.6],
            "versions": {k: "1" for k in ("python", "torch", "onnxruntime", "numpy", "pillow", "uvicorn",
                                          "uvloop", "httptools")},
            "plan": {"repeats": 2, "duration_s": 2.5, "heavy_duration_s": 5.0, "warmup_s": 1.0},
            "load_generator": "test", "server": "test", "transport_clients": dict(transports.DESCRIPTIONS),
        },
        "workloads": [],
        "transports": [entry],
    }  # fmt: skip


def test_transport_summary_is_ratios_to_rest_multipart_at_the_same_clients() -> None:
    summary = report.summarise_transports(transport_results()["transports"][0])
    assert summary["clients"] == [1, 32] and summary["baseline"] == "rest_multipart"
    assert summary["points"][32]["grpc"]["throughput_rps"]["median"] == pytest.approx(66.0)
    assert summary["ratios"][32]["grpc"]["throughput_rps"] == pytest.approx(1.1)
    assert summary["ratios"][1]["grpc"]["p50_ms"] == pytest.approx(16.5 / 20.5)
    assert summary["ratios"][32]["rest_multipart"]["throughput_rps"] == pytest.approx(1.0)
    cpu = summary["points"][32]["grpc"]["server_cpu_ms_per_request"]["median"]
    assert cpu == pytest.approx(statistics.median([1000 * 1.98 / 65, 1000 * 1.98 / 67]))
    assert summary["ratios"][32]["grpc"]["server_cpu_ms_per_request"] == pytest.approx(
        cpu / summary["points"][32]["rest_multipart"]["server_cpu_ms_per_request"]["median"]
    )


def test_transport_table_renders_and_re_renders_from_saved_json(tmp_path: Path) -> None:
    results = transport_results()
    written = report.write(results, tmp_path, "quick")
    assert [p.name for p in written] == ["quick.json", "quick.md", "quick-transports.png"]
    assert all(p.stat().st_size > 0 for p in written)
    text = (tmp_path / "quick.md").read_text()
    assert text == report.markdown(report.load_results(tmp_path / "quick.json"))
    assert "## Targets" not in text  # no workload measured: no headline or target tables
    assert "### efficientnet_lite0 (photos640): transports" in text
    assert "| transport | request KB | req/s @32 | ratio | p50 / p99 ms @32 | p50 ms @1 | ratio |" in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    rows = {line.split(" | ")[0][2:]: line for line in lines}
    assert rows["REST multipart (/predict)"].startswith(
        "| REST multipart (/predict) | 68.4 | 60.0 ±2% | 1.00 | 510 / 610 | 20.50 | 1.00 |"
    )
    assert rows["gRPC ModelInfer"].startswith(
        "| gRPC ModelInfer | 68.9 | 66.0 ±2% | 1.10 | 510 / 610 | 16.50 | 0.80 |"
    )
    assert "class 281, p = 0.5312" in text
    assert "- gRPC ModelInfer: ModelInfer, `image` BYTES in raw_input_contents" in text
    saved = json.loads((tmp_path / "quick.json").read_text())
    assert saved["transport_summary"]["efficientnet_lite0@transports"]["ratios"]["32"]["grpc"][
        "throughput_rps"
    ] == pytest.approx(1.1)


def test_a_missing_baseline_gives_no_ratios_not_an_error() -> None:
    entry = transport_results()["transports"][0]
    entry["served"]["points"] = [p for p in entry["served"]["points"] if p["transport"] != BASELINE]
    summary = report.summarise_transports(entry)
    assert math.isnan(summary["ratios"][32]["grpc"]["throughput_rps"])
    assert "| gRPC ModelInfer |" in report.markdown({**transport_results(), "transports": [entry]})


def test_a_run_without_transports_renders_no_transport_section(tmp_path: Path) -> None:
    results = {**transport_results(), "transports": []}
    assert "## Transports" not in report.markdown(results)
    assert report.plot_transports(results, tmp_path, "x") == []
