"""The checked-in gRPC modules are what ``make proto`` makes from the .proto today."""

from __future__ import annotations

from pathlib import Path

from tools.generate_proto import ROOT, generate


def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    for fresh in generate(tmp_path):
        committed = ROOT / "src" / fresh.relative_to(tmp_path)
        assert fresh.read_text() == committed.read_text(), f"{committed} is stale: run make proto"


def test_messages_live_beside_tritonclients_own() -> None:
    import tritonclient.grpc  # noqa: F401  (defines the same inference.* names in the default pool)

    from inference_engine.rpc.proto import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\x01"])
    from tritonclient.grpc import service_pb2

    assert service_pb2.ModelInferRequest.FromString(request.SerializeToString()).model_name == "m"
