"""Versioned model folders for tests (Triton's layout, ``models/<name>/<N>/``), and the clients
the model-versions tests drive a real server with: model control, steady load, an index poller.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers import ROOT

MODEL_FILE = "model.yaml"


def read_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), path
    return loaded


def write_yaml(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` atomically (a running server may read the file at any moment)."""
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    staging.replace(path)


def make_versioned(folder: Path, versions: Iterable[int] = (1,), **model_keys: Any) -> Path:
    """Turn a one-version model folder into numbered version folders sharing its ``model.yaml``
    (and ``model.py``), with the model-level keys (``version_policy``, ``traffic``, ...) set."""
    path = folder / MODEL_FILE
    config = read_yaml(path)
    config.pop("version", None)
    write_yaml(path, {**config, **model_keys})
    for number in versions:
        (folder / str(number)).mkdir(exist_ok=True)
    return folder


def set_model_keys(folder: Path, **model_keys: Any) -> None:
    """Set (or, with ``None``, remove) keys of a model's shared ``model.yaml``."""
    path = folder / MODEL_FILE
    config = read_yaml(path)
    for key, value in model_keys.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    write_yaml(path, config)


def add_version(folder: Path, number: int, own: dict[str, Any] | None = None) -> Path:
    """Version folder ``number`` of ``folder``, with its own ``model.yaml`` when ``own`` is given."""
    version = folder / str(number)
    version.mkdir(exist_ok=True)
    if own is not None:
        write_yaml(version / MODEL_FILE, own)
    return version


# -- EfficientNet-Lite0: version 1 torch, version 2 its ONNX export -----------------------------


def export_onnx(work: Path, sample: bytes) -> Path:
    """Export a copy of the shipped EfficientNet-Lite0 with the real CLI; the ONNX folder."""
    source = work / "efficientnet_lite0"
    shutil.copytree(ROOT / "models" / "efficientnet_lite0", source)
    (work / "sample.jpg").write_bytes(sample)
    command = [
        sys.executable, "-m", "inference_engine", "export", str(source),
        "--format", "onnx", "--sample", str(work / "sample.jpg"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "parity on" in done.stdout, done.stdout
    return work / "efficientnet_lite0_onnx"


def add_versioned_efficientnet(repo: Path, onnx_folder: Path, **model_keys: Any) -> Path:
    """``efficientnet_lite0`` with version 1 the shipped torch model and version 2 its ONNX export
    (the export's ``model.yaml`` as version 2's own, less the keys only the shared file may set)."""
    folder = repo / "efficientnet_lite0"
    shutil.copytree(ROOT / "models" / "efficientnet_lite0", folder)
    make_versioned(folder, (), **model_keys)
    # ``options`` merge into every version's, and the ONNX backend refuses ``variant``: it moves
    # into version 1's own file (as docs/model-repository.md#versions lays the folder out).
    shared = read_yaml(folder / MODEL_FILE)
    add_version(folder, 1, {"options": shared.pop("options")})
    write_yaml(folder / MODEL_FILE, shared)
    own = {k: v for k, v in read_yaml(onnx_folder / MODEL_FILE).items() if k not in ("name", "version")}
    version = add_version(folder, 2, own)
    shutil.copy(onnx_folder / own["weights"], version / own["weights"])
    return folder


# -- clients -------------------------------------------------------------------------------------


def v2_image_body(image: bytes) -> bytes:
    """An Open Inference Protocol request with one image (a BYTES tensor, base64 in JSON)."""
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(image).decode()]}
    return json.dumps({"inputs": [tensor]}).encode()


def index(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.post("/v2/repository/index")
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def versions_in(entries: list[dict[str, Any]], name: str) -> dict[str, str]:
    """Each version of ``name`` in an index, with its state."""
    return {e["version"]: e["state"] for e in entries if e["name"] == name and "version" in e}


def load(client: httpx.Client, name: str) -> httpx.Response:
    return client.post(f"/v2/repository/models/{name}/load", timeout=120)


@dataclass
class Answer:
    sent: float  # time.monotonic() when the request left
    received: float  # ... and when its answer came back
    status: int
    version: str | None  # the answer's model_version (JSON)
    header_version: str | None  # its X-Model-Version header
    label: str | None  # its top-1 label


class SteadyLoad:
    """``threads`` clients, each sending requests back to back until :meth:`stop`."""

    def __init__(self, base_url: str, path: str, image: bytes, threads: int = 3) -> None:
        self.base_url, self.path, self.image = base_url, path, image
        self.answers: list[Answer] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self._stop.is_set():
                with self._lock:
                    self.sent += 1
                sent = time.monotonic()
                try:
                    response = client.post(self.path, content=self.image)
                except httpx.HTTPError as exc:  # counted as lost: sent, never answered
                    print(f"steady load: {type(exc).__name__}: {exc}")
                    continue
                received = time.monotonic()
                body = (
                    response.json()
                    if response.headers.get("content-type", "").startswith("application/json")
                    else {}
                )
                predictions = body.get("predictions") or [{}]
                answer = Answer(
                    sent, received, response.status_code, body.get("model_version"),
                    response.headers.get("x-model-version"), predictions[0].get("label"),
                )  # fmt: skip
                with self._lock:
                    self.answers.append(answer)

    def counts(self) -> Counter[tuple[int, str | None]]:
        with self._lock:
            return Counter((a.status, a.version) for a in self.answers)


@dataclass
class Observation:
    sent: float
    received: float
    states: dict[str, str]  # version -> state, of one model


@dataclass
class IndexPoller:
    """Polls ``/v2/repository/index`` back to back, keeping one model's version states."""

    base_url: str
    model: str
    observations: list[Observation] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> IndexPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                states = versions_in(index(client), self.model)
                self.observations.append(Observation(sent, time.monotonic(), states))
                time.sleep(0.01)

    def first_ready(self, version: str) -> float | None:
        """When (received) the index first reported ``version`` READY."""
        return next((o.received for o in self.observations if o.states.get(version) == "READY"), None)
