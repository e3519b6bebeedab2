"""The Python client as its own distribution (clients/python, ``inference-engine-client``).

It is versioned with the server, resolves to httpx and httpx's own dependencies (no torch, numpy
or server code), imports nothing from the server, and its own tests pass in a venv that holds only
it (and pytest) against a real server. Resolving and installing need the package index; without
it those tests skip, saying so.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import inference_engine
import inference_engine.client
import inference_engine_client
from tests.helpers import ROOT, ServerProcess
from tests.repository import add_colour_model

CLIENT = ROOT / "clients" / "python"
SERVER_ONLY = {"inference-engine", "torch", "numpy", "pillow", "fastapi", "uvicorn", "onnxruntime"}


def _project(folder: Path) -> dict[str, object]:
    return dict(tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))["project"])


def _name(requirement: str) -> str:
    """A requirement's or distribution's name, normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0]).lower()


def test_the_client_is_versioned_with_the_server_which_depends_on_it() -> None:
    server, client = _project(ROOT), _project(CLIENT)

    assert client["name"] == "inference-engine-client"
    assert client["version"] == server["version"], "release the client with the server's version"
    assert f"inference-engine-client=={server['version']}" in server["dependencies"]  # type: ignore[operator]
    assert client["requires-python"] == server["requires-python"]
    assert [_name(r) for r in client["dependencies"]] == ["httpx"]  # type: ignore[attr-defined]
    assert inference_engine_client.__version__ == inference_engine.__version__
    assert inference_engine.client.InferenceClient is inference_engine_client.InferenceClient


def test_the_client_imports_only_the_standard_library_and_httpx() -> None:
    """Pillow only where the caller passed a PIL image (it has Pillow then); never the server."""
    allowed = set(sys.stdlib_module_names) | {"httpx", "inference_engine_client", "PIL"}
    found: dict[str, set[str]] = {}
    for path in sorted((CLIENT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            found.setdefault(path.name, set()).update(n.split(".")[0] for n in names)
    assert found, "no client modules found"
    assert {p: sorted(n - allowed) for p, n in found.items() if n - allowed} == {}


@pytest.fixture(scope="module")
def client_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of clients/python, so that pip's in-tree builds leave nothing in the repository."""
    copy = tmp_path_factory.mktemp("client-source") / "python"
    skipped = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests")
    shutil.copytree(CLIENT, copy, ignore=skipped)
    return copy


def _pip(*args: str, python: Path | None = None) -> subprocess.CompletedProcess[str]:
    target = ["--python", str(python)] if python else []
    command = [sys.executable, "-m", "pip", *target, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def _resolved(isolation: list[str], requirement: str, report: Path) -> set[str] | None:
    """The distributions ``pip install requirement`` would install in an empty environment."""
    result = _pip(*isolation, "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                  str(report), requirement)  # fmt: skip
    if result.returncode != 0:
        return None
    return {_name(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}


@functools.cache
def _index(report_dir: Path) -> tuple[list[str], set[str]]:
    """pip's isolation arguments that reach the index (ignoring local configuration where that
    works) and what httpx alone resolves to; skips the test when the index is out of reach."""
    for isolation in (["--isolated"], []):
        httpx_alone = _resolved(isolation, "httpx", report_dir / "httpx.json")
        if httpx_alone:
            return isolation, httpx_alone
    pytest.skip("the package index is unreachable: pip cannot resolve httpx")


def test_installing_the_client_pulls_httpx_and_its_dependencies_only(
    client_source: Path, tmp_path: Path
) -> None:
    isolation, httpx_alone = _index(tmp_path)
    client = _resolved(isolation, str(client_source), tmp_path / "client.json")

    assert client is not None, _pip(*isolation, "install", "--dry-run", str(client_source)).stderr
    assert client - {"inference-engine-client"} == httpx_alone, sorted(client)
    assert not client & SERVER_ONLY


@pytest.fixture(scope="module")
def client_venv(client_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the client (a built wheel, not this checkout), httpx, pytest and pytest-asyncio."""
    _index(tmp_path_factory.mktemp("index-probe"))
    venv = tmp_path_factory.mktemp("client-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    requirements = [str(client_source), "pytest", "pytest-asyncio"]
    result = _pip("install", "--quiet", "-c", str(ROOT / "constraints.txt"), *requirements, python=python)
    assert result.returncode == 0, result.stderr
    return python


def test_the_client_venv_has_no_server_torch_or_numpy(client_venv: Path) -> None:
    probe = (
        "import importlib.metadata as m, importlib.util as u, inference_engine_client as c;"
        "print(c.__version__);"
        "print(*sorted({d.metadata['Name'] for d in m.distributions()}));"
        "print(*[n for n in ('inference_engine', 'torch', 'numpy', 'PIL') if u.find_spec(n)])"
    )
    result = subprocess.run([str(client_venv), "-I", "-c", probe], capture_output=True, text=True, check=True)
    version, installed, importable = result.stdout.splitlines()

    assert version == inference_engine.__version__
    assert "inference-engine-client" in installed.split()
    assert not {_name(n) for n in installed.split()} & SERVER_ONLY, installed
    assert importable == ""


@pytest.mark.integration
def test_the_clients_own_tests_pass_in_that_venv_against_a_real_server(
    client_venv: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    add_colour_model(repository, "colour")
    server = ServerProcess(repository).start(tmp_path / "server.log")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONDONTWRITEBYTECODE": "1",
        "IE_CLIENT_TEST_URL": server.url,
        "IE_CLIENT_TEST_MODEL": "colour",
    }
    command = [str(client_venv), "-m", "pytest", "-v", "-p", "no:cacheprovider", "-c", "pyproject.toml"]
    try:
        result = subprocess.run(
            command, cwd=CLIENT, env=env, capture_output=True, text=True, timeout=180, check=False
        )
    finally:
        server.stop()

    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    live = re.findall(r"test_live_server\.py::(\w+) (PASSED|FAILED|SKIPPED|ERROR)", result.stdout)
    assert len(live) >= 2, result.stdout[-3000:]
    assert all(outcome == "PASSED" for _, outcome in live), live
    assert "test_payloads.py::test_a_pil_image_is_sent_as_lossless_png SKIPPED" in result.stdout
