"""``inference-engine`` with uvicorn's event loop and HTTP parser chosen from the environment.

For A/B levers only: ``BENCH_UVICORN_LOOP`` (``asyncio``, ``uvloop``) and
``BENCH_UVICORN_HTTP`` (``h11``, ``httptools``) override what uvicorn's ``auto`` would pick
(uvloop and httptools when installed, as they are with ``uvicorn[standard]``);
``BENCH_EAGER_BATCHING=0`` turns eager batch closing off (every batch waits out the delay);
``BENCH_CHANNELS_LAST=0`` runs EfficientNet in the default (NCHW) memory format;
``BENCH_DECODE_NICE=N`` runs the pre-processing threads at nice ``N`` (the forward pass's threads
keep the process's priority);
``BENCH_SWITCH_INTERVAL`` sets ``sys.setswitchinterval`` (seconds; Python's default is 0.005);
``BENCH_BARE_PREDICT=1`` answers ``POST /predict`` with a bare ASGI function in front of the
application that calls the service directly (no middleware, routing, FastAPI, request context,
access control or access log): what the service, batcher and model cost without the HTTP layers.

    python -m bench.serve_with serve --model-repository ...
"""

from __future__ import annotations

import os
import sys
from typing import Any

import uvicorn

_original_init = uvicorn.Config.__init__


def _init(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
    if loop := os.environ.get("BENCH_UVICORN_LOOP"):
        kwargs["loop"] = loop
    if http := os.environ.get("BENCH_UVICORN_HTTP"):
        kwargs["http"] = http
    _original_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _init  # type: ignore[method-assign]

if os.environ.get("BENCH_EAGER_BATCHING") == "0":
    from inference_engine.batching import batcher

    _batcher_init = batcher.DynamicBatcher.__init__

    def _not_eager(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["eager"] = False
        _batcher_init(self, *args, **kwargs)

    batcher.DynamicBatcher.__init__ = _not_eager  # type: ignore[method-assign]

if os.environ.get("BENCH_CHANNELS_LAST") == "0":
    from inference_engine.models.classifier import EfficientNetLiteClassifier

    EfficientNetLiteClassifier.channels_last = False

if nice := os.environ.get("BENCH_DECODE_NICE"):
    import functools
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from inference_engine import pipeline

    def _lower_priority() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(nice))

    pipeline.ThreadPoolExecutor = functools.partial(  # type: ignore[misc]
        ThreadPoolExecutor, initializer=_lower_priority
    )

if interval := os.environ.get("BENCH_SWITCH_INTERVAL"):
    sys.setswitchinterval(float(interval))

if os.environ.get("BENCH_BARE_PREDICT") == "1":
    import time

    import orjson

    from bench.bare_asgi import read_body
    from inference_engine import server as _server
    from inference_engine.api.routes import format_prediction

    _create_app = _server.create_app

    def _bare_predict(settings: Any, service: Any, *args: Any, **kwargs: Any) -> Any:
        app = _create_app(settings, service, *args, **kwargs)

        async def bare(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["path"] != "/predict" or scope["method"] != "POST":
                await app(scope, receive, send)
                return
            body = await read_body(receive)
            started = time.monotonic()
            route = service.route(None, None, None)
            service.admit(route)
            prediction = await service.infer(
                route, body, top_k=None, deadline=started + 30, request_id="-", labels=None
            )
            answer = orjson.dumps(
                format_prediction(prediction, "-", time.monotonic() - started),
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer})

        bare.state = app.state  # type: ignore[attr-defined]
        return bare

    _server.create_app = _bare_predict  # type: ignore[assignment]

if __name__ == "__main__":
    from inference_engine.cli import main

    sys.exit(main(sys.argv[1:]))
