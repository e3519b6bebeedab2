"""docs/API.md's examples, run against a real server, so the API reference cannot drift.

One server (``efficientnet_lite0``, ``open_nsfw`` and a tiny random CLIP named ``clip``, as the
doc's "The example server" builds, with its gRPC listener on) serves every example, in the order
of the doc. Each example must exit 0, print what the doc shows (in shape: see
``tests/doc_examples.py``), and call the endpoints and RPCs its ``<!-- example: ... -->`` marker
names. Every endpoint of the doc's table needs a curl and a Python example, and the table must
list every route the server has; every RPC of the doc's gRPC table needs a Python example with
``tritonclient.grpc``, and the table must list every RPC the service has.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import doc_examples
from tests.helpers import ROOT, ServerProcess

DOC = ROOT / "docs" / "API.md"
MARKDOWN = DOC.read_text(encoding="utf-8")
EXAMPLES = doc_examples.examples(MARKDOWN)
ENDPOINTS = doc_examples.endpoints_table(MARKDOWN)
RPCS = doc_examples.rpcs_table(MARKDOWN, "### RPCs")
# Routes outside FastAPI's schema: its own schema and UIs, and the playground (a middleware).
NOT_IN_OPENAPI = {
    ("GET", "/docs"),
    ("GET", "/redoc"),
    ("GET", "/openapi.json"),
    ("GET", "/"),
    ("GET", "/playground"),
    ("GET", "/playground/assets/{name}"),
}

# FastAPI's own routes reach the request metrics as route="unmatched" (they are not API routes).
UNLABELLED = {"/docs", "/redoc", "/openapi.json"}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from tests.hf_models import build_tiny_clip  # imports transformers: only when the server is needed
    from tests.repository import add_default_model

    repo = tmp_path_factory.mktemp("doc_repo")
    add_default_model(repo)
    shutil.copytree(ROOT / "models" / "open_nsfw", repo / "open_nsfw")
    build_tiny_clip(repo / "clip")
    process = ServerProcess(repo, env={"IE_SERVER__DEFAULT_MODEL": "efficientnet_lite0"}, grpc=True)
    process.start(tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def folder(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples' ``/tmp/doc_`` files, made by the doc's setup block."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    path = tmp_path_factory.mktemp("doc_files")
    for example in (e for e in EXAMPLES if e.setup):
        for ran in doc_examples.run_console(example, server.port, path, grpc_port=server.grpc_port):
            assert ran.returncode == 0, f"setup at docs/API.md:{example.line} failed:\n{ran.stderr}"
    return path


def test_every_shell_and_python_block_is_an_example_or_says_why_not() -> None:
    unmarked = [f"docs/API.md:{b.line} ({b.language})" for b in doc_examples.unmarked_blocks(MARKDOWN)]
    assert not unmarked, "mark these <!-- example: ... --> or <!-- not-run: why -->: " + ", ".join(unmarked)


def test_examples_name_endpoints_of_the_table() -> None:
    listed = set(ENDPOINTS) | {(doc_examples.GRPC, rpc) for rpc in RPCS}
    unknown = {
        f"{method} {path} (docs/API.md:{e.line})"
        for e in EXAMPLES
        for method, path in e.endpoints
        if (method, path) not in listed
    }
    assert not unknown, f"examples claim endpoints or RPCs that the tables do not list: {sorted(unknown)}"


@pytest.mark.parametrize("language", ["console", "python"])
def test_every_endpoint_has_an_example(language: str) -> None:
    covered = {endpoint for e in EXAMPLES if e.language == language for endpoint in e.endpoints}
    missing = [f"{method} {path}" for method, path in ENDPOINTS if (method, path) not in covered]
    assert not missing, f"endpoints without a {language} example in docs/API.md: {missing}"


def test_every_rpc_has_a_tritonclient_grpc_example() -> None:
    covered = {
        path
        for e in EXAMPLES
        if e.language == "python" and "tritonclient.grpc" in e.code
        for method, path in e.endpoints
        if method == doc_examples.GRPC
    }
    missing = [rpc for rpc in RPCS if rpc not in covered]
    assert not missing, f"RPCs without a tritonclient.grpc example in docs/API.md: {missing}"


def test_the_rpc_table_lists_every_rpc() -> None:
    from inference_engine.rpc.proto import grpc_predict_v2_pb2

    service = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == doc_examples.GRPC_SERVICE
    assert sorted(RPCS) == sorted(m.name for m in service.methods), "the RPC table of docs/API.md"


def test_the_table_lists_every_route(server: ServerProcess) -> None:
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    served = {(m.upper(), path) for path, methods in schema["paths"].items() for m in methods}
    table = set(ENDPOINTS)
    assert served - table == set(), "routes missing from the endpoints table of docs/API.md"
    assert table - served - NOT_IN_OPENAPI == set(), "the endpoints table lists routes the server lacks"


def test_every_path_parameter_is_declared(server: ServerProcess) -> None:
    """Each ``{name}`` in a route's path is a declared, required path parameter (OpenAPI requires
    it; generated clients need it), whether FastAPI found it in the signature or a route
    declared it itself (the predict routes read theirs from the request)."""
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    problems = []
    for path, methods in schema["paths"].items():
        templated = set(re.findall(r"{(\w+)}", path))
        for method, operation in methods.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            required = all(p.get("required") for p in operation.get("parameters", []) if p["in"] == "path")
            if declared != templated or not required:
                problems.append(f"{method.upper()} {path}: declares {sorted(declared)}")
    assert not problems, problems


def _requests(server: ServerProcess) -> dict[str, float]:
    return doc_examples.requests_by_route(httpx.get(f"{server.url}/metrics", timeout=30).text)


@pytest.mark.parametrize("example", [e for e in EXAMPLES if not e.setup], ids=lambda e: e.id)
def test_example(example: doc_examples.Example, server: ServerProcess, folder: Path) -> None:
    before = _requests(server)
    problems: list[str] = []
    if example.language == "console":
        for ran in doc_examples.run_console(example, server.port, folder, grpc_port=server.grpc_port):
            where = f"docs/API.md:{ran.command.line} $ {ran.command.command}"
            if ran.returncode != 0:
                problems.append(f"{where}\nexited {ran.returncode}:\n{ran.output}\n{ran.stderr}")
                continue
            problems.extend(
                f"{where}\n{problem}"
                for problem in doc_examples.compare_output(ran.command.expected, ran.output)
            )
    else:
        printed = doc_examples.run_python(example, server.port, folder, grpc_port=server.grpc_port)
        problems.extend(doc_examples.compare_output(example.expected, printed))
    after = _requests(server)
    own_scrape = {"/metrics": 1.0}  # `before` itself is counted once it has been answered
    for method, path in example.endpoints:
        if method == doc_examples.GRPC:
            label = doc_examples.rpc_route(path)
        else:
            label = "unmatched" if path in UNLABELLED else path
        if after.get(label, 0.0) - before.get(label, 0.0) - own_scrape.get(label, 0.0) < 1:
            problems.append(f"the example names {method} {path} but did not call it")
    assert not problems, "\n\n".join(problems)


def test_the_comparison_sees_shapes_not_numbers() -> None:
    compare = doc_examples.compare_output
    assert compare('{"a": 1, "b": [0.5, 2]}', '{"a": 2.5, "b": [3, 4]}') == []
    assert compare('{"a": 1}', '{"a": 1, "c": 2}')  # a key the doc does not show
    assert compare('{"b": [1, 2]}', '{"b": [1]}')  # another length
    assert compare('{"ready": true}', '{"ready": false}')
    assert compare('{"error": {"type": "bad_request"}}', '{"error": {"type": "invalid_input"}}')
    assert compare('{"xs": [1, ...], "n": 1, ...}', '{"xs": [1, 2, 3], "n": 2, "more": 0}') == []
    assert compare('[{"name": "a"}, ...]', '[{"name": "a"}, {"name": "b"}]') == []
    assert compare("HTTP/1.1 200 OK\nx-request-id: cat-42", "HTTP/1.1 200 OK\r\nx-request-id: cat-43\r\n")
    assert compare("HTTP/1.1 200 OK\ndate: x\n\n{}", "HTTP/1.1 200 OK\r\ndate: y\r\n\r\n{}") == []
    assert compare(f"0.39 tiger cat {'a' * 32}", f"0.41 tiger cat {'b' * 32}") == []
    assert compare("0.39 tiger cat", "0.39 tabby")


def test_console_blocks_are_commands_and_their_outputs() -> None:
    commands = doc_examples.parse_console("$ curl -s \\\n    localhost:8000/v2\n{}\n\n$ true\n", 10)
    assert [(c.command, c.expected, c.line) for c in commands] == [
        ("curl -s \\\n    localhost:8000/v2", "{}", 11),
        ("true", "", 15),
    ]


def test_markers_name_routes_and_rpcs_and_both_ports_are_localized() -> None:
    both = doc_examples.parse_endpoints("GET /v2, gRPC ModelInfer", 1)
    assert both == [("GET", "/v2"), ("gRPC", "ModelInfer")]
    with pytest.raises(ValueError, match="is not 'METHOD /path' or 'gRPC Method'"):
        doc_examples.parse_endpoints("gRPC /inference.GRPCInferenceService/ModelInfer", 1)
    text = "localhost:8000 127.0.0.1:8001 localhost:8001 /tmp/doc_cat.jpg"
    assert doc_examples.localize(text, 5000, "/f", grpc_port=5001) == (
        "127.0.0.1:5000 127.0.0.1:5001 127.0.0.1:5001 /f/doc_cat.jpg"
    )
    assert doc_examples.rpc_route("ModelInfer") == "/inference.GRPCInferenceService/ModelInfer"
