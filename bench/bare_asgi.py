"""A bare ASGI server with the server's own decode and nothing else: the ceiling of the HTTP path.

For the ``serving_path`` lever only: uvicorn (uvloop, httptools) and one coroutine that reads the
body, decodes and pre-processes it with the model's own handler in a pool of one thread per core,
and answers a fixed JSON body. No middleware, routing, batching or forward pass. What the real
server serves below this is the cost of everything it does per request in Python.

    python -m bench.bare_asgi serve --model-repository REPO --model NAME --port PORT [...]

Takes (and ignores the rest of) the ``serve`` command line that :class:`bench.server.ServedModel`
passes; answers ``GET /ready`` and ``GET /metrics`` (empty) so the suite's probes work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvicorn

from bench.raw import handler_from

ANSWER = b'{"predictions":[{"label":"alpha","score":0.5}]}'


async def read_body(receive: Any) -> bytes:
    """The whole request body, from ASGI ``http.request`` messages."""
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


def app_for(handler: Any, workers: int) -> Any:
    from bench.raw import prepare_fn

    prepare = prepare_fn(handler)
    pool = ThreadPoolExecutor(workers)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        answer = ANSWER if scope["path"] not in ("/metrics", "/ready") else b""
        if scope["method"] == "POST":
            await asyncio.get_running_loop().run_in_executor(pool, prepare, body)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args(argv)
    workers = int(os.environ.get("IE_SERVER__PREPROCESS_WORKERS", os.cpu_count() or 1))
    app = app_for(handler_from(args.model_repository, args.model), workers)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
