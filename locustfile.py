"""Load test for inference-engine with Locust (https://locust.io).

Start a server (``make serve``), then, from the repository root::

    locust -f locustfile.py --host http://127.0.0.1:8000 --headless -u 32 -r 8 -t 60s

``-u`` users (each sends its next request as soon as the last one is answered), ``-r`` users
started per second, ``-t`` how long to run. Without ``--headless`` Locust serves its web UI on
http://127.0.0.1:8089. Add ``--csv results/locust`` to keep the numbers.

Each user posts a real photo (scikit-image's ``coffee``, 400x600, encoded as JPEG once at start) to
``POST /predict``, and now and then asks ``GET /ready`` and ``GET /v1/models``.

Environment variables:

- ``IE_API_KEY``: sent as ``Authorization: Bearer <key>`` (the prod configuration requires a key;
  ``inference-engine auth new-key`` makes one and its digest).
- ``IE_MODEL``: post to ``/v1/models/<name>/predict`` instead of the default model's ``/predict``.

Load shedding is expected behaviour, not a failure: a ``429`` (rate limit) or a ``503`` (queue
full, ``Retry-After``) is counted as a success under its own name (``/predict [429 rate_limited]``,
``/predict [503 queue_full]``), so the stats show how much was shed and ``--headless`` exits 0 when
nothing else went wrong. Every other non-2xx answer, or a 200 without predictions, is a failure.
A summary of the shed requests is printed when the run stops.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from typing import Any

from locust import HttpUser, between, events, task
from PIL import Image
from skimage import data

API_KEY = os.environ.get("IE_API_KEY", "")
MODEL = os.environ.get("IE_MODEL", "")
PREDICT_PATH = f"/v1/models/{MODEL}/predict" if MODEL else "/predict"
SHED_STATUSES = frozenset({429, 503})

# status code and error type -> count, over the whole run (all users of this process)
SHED: Counter[tuple[int, str]] = Counter()


def coffee_jpeg(quality: int = 90) -> bytes:
    """scikit-image's coffee photo as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(data.coffee()).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


IMAGE = coffee_jpeg()


def error_type(response: Any) -> str:
    """The ``error.type`` of a standard error body, or ``unknown``."""
    try:
        return str(response.json()["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "unknown"


class InferenceUser(HttpUser):
    """A client that mostly classifies images and sometimes checks the server's state."""

    wait_time = between(0, 0.05)

    def on_start(self) -> None:
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"

    @task(20)
    def predict(self) -> None:
        with self.client.post(
            PREDICT_PATH,
            data=IMAGE,
            headers={"Content-Type": "image/jpeg"},
            name=PREDICT_PATH,
            catch_response=True,
        ) as response:
            if response.status_code in SHED_STATUSES:
                kind = error_type(response)
                SHED[(response.status_code, kind)] += 1
                # Its own row in the stats: counted, but not a failure.
                response.request_meta["name"] = f"{PREDICT_PATH} [{response.status_code} {kind}]"
                response.success()
            elif response.status_code != 200:
                response.failure(f"{response.status_code} {error_type(response)}")
            elif not response.json().get("predictions"):
                response.failure("200 without predictions")
            else:
                response.success()

    @task(1)
    def ready(self) -> None:
        with self.client.get("/ready", name="/ready", catch_response=True) as response:
            if response.status_code == 200:
                response.success()
            else:
                response.failure(f"not ready: {response.text[:200]}")

    @task(1)
    def models(self) -> None:
        with self.client.get("/v1/models", name="/v1/models", catch_response=True) as response:
            if response.status_code in SHED_STATUSES:
                SHED[(response.status_code, error_type(response))] += 1
                response.request_meta["name"] = f"/v1/models [{response.status_code}]"
                response.success()
            elif response.status_code != 200 or "models" not in response.json():
                response.failure(f"{response.status_code} {error_type(response)}")
            else:
                response.success()


@events.test_stop.add_listener
def report_shed(environment: Any, **_: Any) -> None:
    if SHED:
        shed = ", ".join(f"{count} x {status} {kind}" for (status, kind), count in sorted(SHED.items()))
        print(f"load shed (counted as success): {shed}")
    else:
        print("load shed (counted as success): none")
