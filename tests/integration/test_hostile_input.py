"""A generated corpus of hostile inputs: each gets its documented 4xx error, and the server keeps serving.

Every case is sent to the real server (``POST /predict`` serves efficientnet_lite0) and must come back
with the status and error ``type`` that ``src/`` documents for it, in the standard error body, with a
short message that never echoes a long slice of the input. Right after each case a good request (the
scikit-image coffee photo) must still get 200. A table of how each case was answered is printed at the
end of the module (visible with ``-s``) and written to ``hostile_input_summary.txt`` in a pytest temp dir.

Expected answers, from the code:

* ``imaging.sniff_format``: an empty payload is 422 ``invalid_input``; bytes that are not JPEG, PNG,
  WebP, GIF, BMP or TIFF by their magic bytes are 415 whatever ``Content-Type`` claims (SVG included).
* ``imaging.decode_image``: an image whose header is too large (pixels or a side) is 422
  ``image_too_large`` before any pixel is decoded; too small is 422 ``image_too_small``; an image
  that cannot be decoded (truncated, corrupt) is 422 ``invalid_input``.
* ``api.payload``: a body past ``max_body_bytes`` is 413 (streamed or declared); bad multipart
  framing, bad JSON, a JSON body that is not exactly ``{"image"}`` or ``{"url"}``, bad base64, a
  data: URI that is not base64, and ``url`` while URL fetching is off are 400 ``bad_request``.
* ``api.routes``: an unknown model is 404 (the name is cut to 64 characters in the message), a bad
  ``top_k`` is 422, and a bad ``X-Request-Timeout-Ms`` is 400.

A valid image followed by trailing data (a JPEG with a ZIP appended, a PNG missing only its IEND
chunk) decodes and is answered 200, so such polyglots are not in this corpus of 4xx cases.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import random
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image
from skimage import data

from tests.helpers import ServerProcess, encode

pytestmark = pytest.mark.integration

MAX_BODY_BYTES = 5_000_000  # configs/test.yaml server.max_body_bytes
MAX_MESSAGE_CHARS = 300
#: The longest verbatim slice of the input an error message may carry (a model name is cut to 64).
ECHO_WINDOW = 65
BOUNDARY = "hostile-boundary-7d1f"

RESULTS: list[tuple[str, int, str, int]] = []


# -- payload builders ---------------------------------------------------------------------------


@functools.cache
def coffee_jpeg() -> bytes:
    return encode(data.coffee(), "JPEG", quality=90)


@functools.cache
def coffee_png() -> bytes:
    return encode(data.coffee(), "PNG")


def garbage(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` RGB pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def bmp_claiming(width: int, height: int) -> bytes:
    """A BMP file header plus a BITMAPINFOHEADER claiming ``width`` x ``height`` 24-bit pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def png_with_zeroed_idat() -> bytes:
    payload = bytearray(coffee_png())
    start = payload.index(b"IDAT") + 4 + 100
    payload[start : start + 4096] = b"\x00" * 4096
    return bytes(payload)


def png_with_bad_ihdr_crc() -> bytes:
    payload = bytearray(coffee_png())
    payload[29:33] = b"\x00\x00\xde\xad"  # the IHDR chunk's CRC
    return bytes(payload)


def flat_image(width: int, height: int, fmt: str = "PNG") -> bytes:
    return encode(Image.new("RGB" if fmt == "JPEG" else "L", (width, height), 128), fmt)


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cat.jpg", b"not really a cat " * 64)
    return buffer.getvalue()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
    b'<rect width="64" height="64" fill="red"/><script>alert(1)</script></svg>'
)
TEXT = b"Lorem ipsum dolor sit amet, this is a plain text file and certainly not a JPEG image.\n" * 8
#: GIF header whose logical-screen bytes open a JavaScript comment: a classic GIF/JS polyglot.
GIF_JS_POLYGLOT = b"GIF89a/*\x0a\x00\x00\x00\x00*/=1;alert(document.domain);//<script>alert(1)</script>"


# -- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One request of the corpus; ``content`` may be a chunk generator (no Content-Length)."""

    content: bytes | Callable[[], Iterator[bytes]] = b""
    headers: dict[str, str | bytes] = field(default_factory=dict)  # bytes: sent as they are
    params: dict[str, str] = field(default_factory=dict)
    path: str = "/predict"

    def probe(self) -> str:
        """The input as text, to check that error messages do not echo long slices of it."""
        body = self.content if isinstance(self.content, bytes) else next(self.content())
        headers = [v.decode("latin-1") if isinstance(v, bytes) else v for v in self.headers.values()]
        parts = [self.path, *headers, *self.params.values(), body[:200_000].decode("latin-1")]
        return "\n".join(parts)


@dataclass(frozen=True)
class Hostile:
    id: str
    status: int
    type: str
    build: Callable[[], Sent]
    bug: str | None = None  # a known server bug: the case is expected to fail until it is fixed


def raw(body: bytes, content_type: str | None = "image/jpeg") -> Callable[[], Sent]:
    return lambda: Sent(body, {"content-type": content_type} if content_type else {})


def lazy_raw(make: Callable[[], bytes], content_type: str = "image/jpeg") -> Callable[[], Sent]:
    return lambda: Sent(make(), {"content-type": content_type})


def as_json(document: object) -> Callable[[], Sent]:
    return lambda: Sent(json.dumps(document).encode(), {"content-type": "application/json"})


def json_text(text: bytes) -> Callable[[], Sent]:
    return lambda: Sent(text, {"content-type": "application/json"})


def multipart_body(
    parts: list[tuple[str | None, str | None, bytes]], boundary: str = BOUNDARY, close: bool = True
) -> bytes:
    """Frame ``(field name, filename, data)`` parts by hand, so the framing itself can be broken."""
    body = b""
    for name, filename, payload in parts:
        disposition = "form-data"
        if name is not None:
            disposition += f'; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        body += b"Content-Type: application/octet-stream\r\n\r\n" + payload + b"\r\n"
    if close:
        body += f"--{boundary}--\r\n".encode()
    return body


def multipart(
    parts: list[tuple[str | None, str | None, bytes]]
    | Callable[[], list[tuple[str | None, str | None, bytes]]],
    *,
    header_boundary: str | None = BOUNDARY,
    body_boundary: str = BOUNDARY,
    close: bool = True,
) -> Callable[[], Sent]:
    def build() -> Sent:
        content_type = "multipart/form-data"
        if header_boundary is not None:
            content_type += f"; boundary={header_boundary}"
        listed = parts() if callable(parts) else parts
        return Sent(multipart_body(listed, body_boundary, close), {"content-type": content_type})

    return build


def with_query(**params: str) -> Callable[[], Sent]:
    return lambda: Sent(coffee_jpeg(), {"content-type": "image/jpeg"}, params=params)


def with_timeout_header(value: str) -> Callable[[], Sent]:
    header = value.encode("latin-1")  # HTTP header bytes; httpx would refuse a non-ASCII str
    return lambda: Sent(coffee_jpeg(), {"content-type": "image/jpeg", "x-request-timeout-ms": header})


def chunked_oversized() -> Sent:
    def chunks() -> Iterator[bytes]:
        yield b"\xff\xd8\xff\xe0" + b"\x00" * 99_996
        for _ in range(59):  # 6 MB in all, with no Content-Length: the cap must hold while streaming
            yield b"\x00" * 100_000

    return Sent(chunks, {"content-type": "image/jpeg"})


def long_model_name() -> Sent:
    name = "m" + "".join(random.Random(1).choices("abcdefghijklmnopqrstuvwxyz0123456789", k=3000))
    return Sent(coffee_jpeg(), {"content-type": "image/jpeg"}, path=f"/v1/models/{name}/predict")


B64_TEXT = base64.b64encode(TEXT).decode()

CORPUS: list[Hostile] = [
    # empty and truncated
    Hostile("empty-body", 422, "invalid_input", raw(b"", None)),
    Hostile("empty-body-claiming-jpeg", 422, "invalid_input", raw(b"")),
    Hostile("jpeg-first-2-bytes", 415, "unsupported_media_type", lambda: Sent(coffee_jpeg()[:2])),
    *(
        Hostile(
            f"truncated-jpeg-at-{label}", 422, "invalid_input", lazy_raw(lambda cut=cut: coffee_jpeg()[:cut])
        )
        for label, cut in [("3", 3), ("100", 100), ("1000", 1000), ("20000", 20_000), ("60000", 60_000)]
    ),
    Hostile(
        "truncated-png-after-ihdr", 422, "invalid_input", lazy_raw(lambda: coffee_png()[:33], "image/png")
    ),
    Hostile(
        "truncated-png-at-half", 422, "invalid_input", lazy_raw(lambda: coffee_png()[:224_000], "image/png")
    ),
    # corrupt
    Hostile("corrupt-png-idat-zeroed", 422, "invalid_input", lazy_raw(png_with_zeroed_idat, "image/png")),
    Hostile("corrupt-png-ihdr-crc", 422, "invalid_input", lazy_raw(png_with_bad_ihdr_crc, "image/png")),
    Hostile("corrupt-jpeg-garbage-after-soi", 422, "invalid_input", raw(b"\xff\xd8\xff\xe0" + garbage(5000))),
    Hostile(
        "corrupt-webp-garbage", 422, "invalid_input", raw(b"RIFF\x10\x00\x00\x00WEBPVP8 " + garbage(200))
    ),
    Hostile("corrupt-tiff-garbage", 422, "invalid_input", raw(b"II*\x00" + garbage(200, seed=2))),
    Hostile("corrupt-bmp-garbage", 422, "invalid_input", raw(b"BM" + garbage(100, seed=3))),
    # dimensions
    Hostile("bomb-png-20000x20000", 422, "image_too_large", raw(png_claiming(20_000, 20_000), "image/png")),
    Hostile("bomb-png-6000x6000-header", 422, "image_too_large", raw(png_claiming(6000, 6000), "image/png")),
    Hostile(
        "bomb-bmp-100000x100000", 422, "image_too_large", raw(bmp_claiming(100_000, 100_000), "image/bmp")
    ),
    Hostile("image-1x1", 422, "image_too_small", lazy_raw(lambda: flat_image(1, 1), "image/png")),
    Hostile("image-20000x1", 422, "image_too_large", lazy_raw(lambda: flat_image(20_000, 1), "image/png")),
    Hostile("image-4x4-jpeg", 422, "image_too_small", lazy_raw(lambda: flat_image(4, 4, "JPEG"))),
    Hostile(
        "image-7x64-gif", 422, "image_too_small", lazy_raw(lambda: flat_image(7, 64, "GIF"), "image/gif")
    ),
    # not images, whatever Content-Type says
    Hostile("text-as-jpeg", 415, "unsupported_media_type", raw(TEXT)),
    Hostile("pdf-as-jpeg", 415, "unsupported_media_type", raw(PDF)),
    Hostile("zip-as-jpeg", 415, "unsupported_media_type", lazy_raw(zip_archive)),
    Hostile("html-as-jpeg", 415, "unsupported_media_type", raw(HTML)),
    Hostile("json-as-raw-jpeg", 415, "unsupported_media_type", raw(b'{"image": "aGVsbG8="}')),
    Hostile("svg", 415, "unsupported_media_type", raw(SVG, "image/svg+xml")),
    Hostile("svg-as-multipart-file", 415, "unsupported_media_type", multipart([("file", "x.svg", SVG)])),
    Hostile("html-then-jpeg-polyglot", 415, "unsupported_media_type", lazy_raw(lambda: HTML + coffee_jpeg())),
    Hostile("gif-js-polyglot", 422, "invalid_input", raw(GIF_JS_POLYGLOT, "image/gif")),
    # multipart framing
    Hostile(
        "multipart-wrong-boundary",
        400,
        "bad_request",
        multipart(lambda: [("file", "c.jpg", coffee_jpeg())], body_boundary="some-other-boundary"),
    ),
    Hostile(
        "multipart-no-closing-boundary",
        400,
        "bad_request",
        multipart(lambda: [("file", "c.jpg", coffee_jpeg())], close=False),
    ),
    Hostile(
        "multipart-no-boundary-param",
        400,
        "bad_request",
        multipart(lambda: [("file", "c.jpg", coffee_jpeg())], header_boundary=None),
    ),
    Hostile(
        "multipart-field-named-image",
        400,
        "bad_request",
        multipart(lambda: [("image", "c.jpg", coffee_jpeg())]),
    ),
    Hostile(
        "multipart-part-without-name", 400, "bad_request", multipart(lambda: [(None, "c.jpg", coffee_jpeg())])
    ),
    Hostile("multipart-file-as-plain-field", 400, "bad_request", multipart(lambda: [("file", None, b"abc")])),
    Hostile("multipart-empty-file", 422, "invalid_input", multipart([("file", "empty.jpg", b"")])),
    Hostile(
        "multipart-file-over-body-cap",
        413,
        "payload_too_large",
        multipart(lambda: [("file", "big.jpg", b"\xff\xd8\xff" + b"\x00" * (MAX_BODY_BYTES + 1000))]),
    ),
    # JSON bodies
    Hostile(
        "json-over-5mb",
        413,
        "payload_too_large",
        lambda: Sent(json.dumps({"image": "A" * 5_200_000}).encode(), {"content-type": "application/json"}),
    ),
    Hostile("json-100000-brackets", 400, "bad_request", json_text(b"[" * 100_000)),
    Hostile("json-50000-nested-objects", 400, "bad_request", json_text(b'{"a":' * 50_000)),
    Hostile("json-syntax-error", 400, "bad_request", json_text(b'{"image": "abc"')),
    Hostile("json-not-utf8", 400, "bad_request", json_text(b'{"image": "\xff\xfe\xfd"}')),
    Hostile(
        "json-jpeg-bytes",
        400,
        "bad_request",
        lambda: Sent(coffee_jpeg(), {"content-type": "application/json"}),
    ),
    Hostile("json-array", 400, "bad_request", as_json([B64_TEXT])),
    Hostile("json-string", 400, "bad_request", as_json(B64_TEXT)),
    Hostile("json-null", 400, "bad_request", as_json(None)),
    Hostile("json-number", 400, "bad_request", as_json(12345)),
    Hostile("json-empty-object", 400, "bad_request", as_json({})),
    Hostile("json-unknown-fields", 400, "bad_request", as_json({"img": B64_TEXT, "extra": 1})),
    Hostile("json-unknown-field-10k-name", 400, "bad_request", as_json({"k" * 10_000: 1, "image": B64_TEXT})),
    Hostile("json-image-and-url", 400, "bad_request", as_json({"image": B64_TEXT, "url": "http://x/y.jpg"})),
    Hostile("json-image-not-a-string", 400, "bad_request", as_json({"image": 12345})),
    Hostile("json-invalid-base64", 400, "bad_request", as_json({"image": "not base64 at all!!" * 20})),
    Hostile("json-base64-of-text", 415, "unsupported_media_type", as_json({"image": B64_TEXT})),
    Hostile("json-empty-image", 422, "invalid_input", as_json({"image": ""})),
    Hostile(
        "json-data-uri-not-base64",
        400,
        "bad_request",
        as_json({"image": "data:image/png,hello%20world" * 10}),
    ),
    Hostile(
        "json-data-uri-no-comma", 400, "bad_request", as_json({"image": "data:image/png;base64" + "A" * 400})
    ),
    Hostile(
        "json-data-uri-base64-html",
        415,
        "unsupported_media_type",
        as_json({"image": "data:image/png;base64," + base64.b64encode(HTML).decode()}),
    ),
    Hostile(
        "json-url-while-disabled", 400, "bad_request", as_json({"url": "http://169.254.169.254/latest/"})
    ),
    Hostile("json-url-not-a-string", 400, "bad_request", as_json({"url": ["http://a/b.jpg"]})),
    # path, query and headers
    Hostile("model-name-3001-chars", 404, "model_not_found", long_model_name),
    *(
        Hostile(f"top-k-{v}", 422, "invalid_input", with_query(top_k=v))
        for v in ["0", "-1", "abc", str(10**9)]
    ),
    *(
        Hostile(f"timeout-header-{label}", 400, "bad_request", with_timeout_header(v))
        for label, v in [("abc", "abc"), ("minus-5", "-5"), ("zero", "0"), ("float", "1.5")]
    ),
    Hostile(
        "timeout-header-superscript-2",
        400,
        "bad_request",
        with_timeout_header("\u00b2"),  # a Unicode digit: isdigit() says yes, int() says no
    ),
    # size caps
    Hostile(
        "raw-over-cap-with-length",
        413,
        "payload_too_large",
        lambda: Sent(b"\xff\xd8\xff" + b"0" * MAX_BODY_BYTES, {"content-type": "image/jpeg"}),
    ),
    Hostile("raw-over-cap-chunked", 413, "payload_too_large", chunked_oversized),
]


# -- the test -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module", autouse=True)
def summary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    width = max((len(case) for case, *_ in RESULTS), default=4)
    lines = [f"{'case':<{width}}  status  error type                  message chars"]
    lines += [
        f"{case:<{width}}  {status:>6}  {kind:<26}  {chars:>13}" for case, status, kind, chars in RESULTS
    ]
    table = "\n".join(lines)
    path: Path = tmp_path_factory.mktemp("hostile") / "hostile_input_summary.txt"
    path.write_text(table + "\n")
    print(f"\nhostile input corpus: {len(RESULTS)} cases answered (also in {path})\n{table}")


def test_the_corpus_is_large_and_ids_are_unique() -> None:
    ids = [case.id for case in CORPUS]
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)


def error_summary(response: httpx.Response) -> tuple[str, int]:
    """The error type and message length, for the summary table (whatever the body is)."""
    try:
        error = response.json()["error"]
        return str(error["type"]), len(str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return "<not the error shape>", len(response.text)


def echoed_slice(message: str, sent: str) -> str | None:
    """A slice of ``message`` of ECHO_WINDOW characters that occurs verbatim in ``sent``, if any."""
    for start in range(len(message) - ECHO_WINDOW + 1):
        if message[start : start + ECHO_WINDOW] in sent:
            return message[start : start + ECHO_WINDOW]
    return None


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            case, id=case.id, marks=[pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
        )
        for case in CORPUS
    ],
)
def test_hostile_input_gets_its_documented_4xx_and_the_server_keeps_serving(
    client: httpx.Client, case: Hostile
) -> None:
    sent = case.build()
    content = sent.content if isinstance(sent.content, bytes) else sent.content()
    response = client.post(sent.path, content=content, headers=sent.headers, params=sent.params)

    RESULTS.append((case.id, response.status_code, *error_summary(response)))

    assert response.status_code < 500, f"{case.id}: {response.status_code} {response.text[:500]}"
    assert response.headers.get("content-type") == "application/json", response.text[:500]
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"type", "message", "request_id"}, error
    assert (response.status_code, error["type"]) == (case.status, case.type), error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert isinstance(error["message"], str)
    assert 0 < len(error["message"]) < MAX_MESSAGE_CHARS, error["message"]
    assert "Traceback" not in response.text
    assert echoed_slice(error["message"], sent.probe()) is None, f"the message echoes the input: {error}"

    good = client.post("/predict", content=coffee_jpeg(), headers={"content-type": "image/jpeg"})
    assert good.status_code == 200, f"a good request failed right after {case.id}: {good.text[:500]}"
    assert good.json()["predictions"]


def test_an_over_long_model_name_is_not_echoed_whole(client: httpx.Client) -> None:
    sent = long_model_name()
    name = sent.path.split("/")[3]
    response = client.post(sent.path, content=sent.content, headers=sent.headers)
    message = response.json()["error"]["message"]
    assert response.status_code == 404
    assert name not in message
    assert name[:64] in message  # a recognisable prefix, cut where the code documents
    assert name[:65] not in message
    assert "efficientnet_lite0" in message
