"""locustfile.py: its user class and tasks, and a few seconds of it against a real server.

Locust monkey-patches the standard library (gevent) when it is imported, so it is never imported
into the test process: the file is inspected in a child interpreter, and the load run is a child
``locust`` process.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference_engine.access import hash_key
from tests.helpers import ROOT, ServerProcess
from tests.repository import add_colour_model

LOCUSTFILE = ROOT / "locustfile.py"

if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed (pip install locust)", allow_module_level=True)

INSPECT = r"""
import collections, json, os, sys
sys.path.insert(0, os.environ["ROOT"])
import locust
from locust.env import Environment
import locustfile

users = [
    name for name, value in vars(locustfile).items()
    if isinstance(value, type) and issubclass(value, locust.HttpUser) and value is not locust.HttpUser
]
user_class = getattr(locustfile, users[0])
weights = collections.Counter(task.__name__ for task in user_class.tasks)
user_class.host = "http://127.0.0.1:1"  # never contacted
user = user_class(Environment(user_classes=[user_class]))
user.on_start()
print(json.dumps({
    "users": users,
    "weights": weights,
    "wait_time": [user.wait_time() for _ in range(50)],
    "image_head": locustfile.IMAGE[:3].hex(),
    "image_size": len(locustfile.IMAGE),
    "predict_path": locustfile.PREDICT_PATH,
    "authorization": user.client.headers.get("Authorization"),
    "doc": locustfile.__doc__,
}))
"""


def inspect_locustfile(**env: str) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if k not in ("IE_API_KEY", "IE_MODEL")}
    result = subprocess.run(
        [sys.executable, "-c", INSPECT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**environ, "ROOT": str(ROOT), **env},
    )
    assert result.returncode == 0, result.stderr
    info: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return info


@pytest.fixture(scope="module")
def plain() -> dict[str, Any]:
    return inspect_locustfile()


def test_one_http_user_with_weighted_tasks(plain: dict[str, Any]) -> None:
    assert plain["users"] == ["InferenceUser"]
    weights = plain["weights"]
    assert set(weights) == {"predict", "ready", "models"}
    assert weights["predict"] > 5 * (weights["ready"] + weights["models"]), weights
    assert all(0 <= w <= 1 for w in plain["wait_time"])


def test_posts_a_real_jpeg_to_predict(plain: dict[str, Any]) -> None:
    assert plain["image_head"] == "ffd8ff"  # JPEG
    assert plain["image_size"] > 10_000  # a real photo, not a placeholder
    assert plain["predict_path"] == "/predict"
    assert plain["authorization"] is None


def test_api_key_and_model_from_the_environment() -> None:
    info = inspect_locustfile(IE_API_KEY="secret-key", IE_MODEL="colour")
    assert info["authorization"] == "Bearer secret-key"
    assert info["predict_path"] == "/v1/models/colour/predict"


def test_docstring_gives_the_command_line(plain: dict[str, Any]) -> None:
    assert "locust -f locustfile.py --host http://127.0.0.1:8000 --headless -u 32 -r 8 -t 60s" in plain["doc"]
    for variable in ("IE_API_KEY", "IE_MODEL"):
        assert variable in plain["doc"]


KEY = "locust-test-key"


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A fast model behind API keys and a tight rate limit, so a short run sees 200s and 429s."""
    repo = tmp_path_factory.mktemp("locust-repo")
    add_colour_model(repo, "colour")
    env = {
        "IE_AUTH__ENABLED": "true",
        "IE_AUTH__API_KEY_HASHES": json.dumps([hash_key(KEY)]),
        "IE_RATE_LIMIT__ENABLED": "true",
        "IE_RATE_LIMIT__RATE": "5",
        "IE_RATE_LIMIT__BURST": "5",
        "IE_LOGGING__ACCESS_LOG": "false",
    }
    server = ServerProcess(repo, env=env, headers={"Authorization": f"Bearer {KEY}"})
    server.start(tmp_path_factory.mktemp("locust-logs") / "server.log")
    yield server
    server.stop()


Stats = dict[str, dict[str, str]]
Run = tuple[subprocess.CompletedProcess[str], Stats]


def run_locust(server: ServerProcess, prefix: Path, **env: str) -> Run:
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", server.url,
        "--headless", "-u", "4", "-r", "4", "-t", "3s", "--stop-timeout", "2",
        "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if k not in ("IE_API_KEY", "IE_MODEL")}
    environ.update(env)
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=ROOT, env=environ)
    with open(f"{prefix}_stats.csv", newline="") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    return result, rows


@pytest.mark.integration
def test_a_short_run_sheds_without_failing(limited_server: ServerProcess, tmp_path: Path) -> None:
    result, rows = run_locust(limited_server, tmp_path / "run", IE_API_KEY=KEY)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert rows["Aggregated"]["Failure Count"] == "0", output
    assert int(rows["/predict"]["Request Count"]) > 0, output
    assert int(rows["/predict [429 rate_limited]"]["Request Count"]) > 0, output
    assert "load shed (counted as success):" in output


@pytest.mark.integration
def test_a_run_without_the_key_fails(limited_server: ServerProcess, tmp_path: Path) -> None:
    result, rows = run_locust(limited_server, tmp_path / "run")
    assert result.returncode != 0
    assert int(rows["/predict"]["Failure Count"]) > 0
