"""The client against a real server, when one is named by ``IE_CLIENT_TEST_URL``; skipped otherwise.

The server's test suite starts one (a model called ``colour`` that names an image's dominant
channel) and runs these tests in a venv holding only the client, httpx and pytest
(tests/clients/test_client_distribution.py). Images are PNGs written here: no Pillow, no numpy.
"""

from __future__ import annotations

import asyncio
import os
import struct
import zlib

import pytest

from inference_engine_client import AsyncInferenceClient, InferenceClient, NotFound

URL = os.environ.get("IE_CLIENT_TEST_URL", "")
MODEL = os.environ.get("IE_CLIENT_TEST_MODEL", "colour")

pytestmark = pytest.mark.skipif(not URL, reason="no server to test against: set IE_CLIENT_TEST_URL")


def png(rgb: tuple[int, int, int], size: int = 16) -> bytes:
    """A ``size`` x ``size`` PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))  # filter 0 per row
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_the_sync_client_classifies_images_and_reads_the_server_state() -> None:
    with InferenceClient(URL, timeout=30) as client:
        assert client.ready().ready
        assert MODEL in {m.name for m in client.models()}
        green = client.predict(png((10, 250, 10)), model=MODEL, request_id="client-alone-1")
        red = client.predict(png((250, 10, 10)), model=MODEL)
        with pytest.raises(NotFound):
            client.predict(png((1, 2, 3)), model="no_such_model")

    assert green.model == MODEL
    assert green.request_id == "client-alone-1"
    assert green.top1 is not None and green.top1.label == "green"
    assert red.labels[0] == "red"


async def test_the_async_client_classifies_images_concurrently() -> None:
    colours = {"red": (240, 5, 5), "green": (5, 240, 5), "blue": (5, 5, 240)}
    async with AsyncInferenceClient(URL, timeout=30) as client:
        predictions = await asyncio.gather(
            *(client.predict(png(rgb), model=MODEL) for rgb in colours.values())
        )

    assert [p.labels[0] for p in predictions] == list(colours)
