"""Regenerate the gRPC modules (and their type stubs) from the Open Inference Protocol's .proto.

``make proto`` runs it over ``src``; the tests run it into a temporary folder and compare, so the
checked-in modules cannot drift from the ``.proto``. The messages are put in a descriptor pool of
their own: ``tritonclient.grpc`` defines the same ``inference.*`` names in protobuf's default
pool, and one process may import both (the tests do; so may a client beside a server).

    python tools/generate_proto.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO = Path("inference_engine/rpc/proto/grpc_predict_v2.proto")
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out: Path) -> list[Path]:
    """Write the four generated files under ``out`` (beside a copy of the .proto); return them."""
    source = out / PROTO
    if source.resolve() != (ROOT / "src" / PROTO).resolve():
        source.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "src" / PROTO, source)
    # protoc finds the mypy plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{out}",
            f"--python_out={out}",
            f"--mypy_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_grpc_out={out}",
            str(source),
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    messages = source.with_name(source.stem + "_pb2.py")
    text = messages.read_text()
    if DEFAULT_POOL not in text:
        raise SystemExit(f"{messages}: the descriptor line changed; update tools/generate_proto.py")
    messages.write_text(text.replace(DEFAULT_POOL, OWN_POOL))
    stem = source.with_suffix("")
    return [Path(f"{stem}{suffix}") for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "src", help="root of the package tree (src)")
    for path in generate(parser.parse_args().out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
