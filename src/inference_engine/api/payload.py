"""Read an image from a request: raw body, multipart ``file``, or JSON (base64 or URL).

The byte cap is enforced while the body streams in, so a client cannot make the server buffer
more than ``max_bytes`` whatever ``Content-Length`` claims (or omits). Error messages never echo
the client's input back beyond a short, bounded excerpt.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncGenerator
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from inference_engine.errors import BadRequest, PayloadTooLarge
from inference_engine.fetch import ImageFetcher

FILE_FIELD = "file"
JSON_FIELDS = frozenset({"image", "url"})


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body exceeds the limit of {max_bytes} bytes")


def _excerpt(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


async def capped_stream(request: Request, max_bytes: int) -> AsyncGenerator[bytes, None]:
    """The request body, chunk by chunk, raising 413 as soon as it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdecimal() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(max_bytes)
        if chunk:
            yield chunk


async def read_image_bytes(request: Request, max_bytes: int, fetcher: ImageFetcher | None = None) -> bytes:
    """The encoded image from whichever form the request carries it in."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        return await _read_multipart(request, max_bytes)
    body = b"".join([chunk async for chunk in capped_stream(request, max_bytes)])
    if content_type.startswith("application/json"):
        return await _read_json(body, fetcher)
    return body


async def _read_multipart(request: Request, max_bytes: int) -> bytes:
    parser = MultiPartParser(request.headers, capped_stream(request, max_bytes), max_files=4, max_fields=32)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from None
    try:
        upload = form.get(FILE_FIELD)
        if not isinstance(upload, UploadFile):
            raise BadRequest(f"multipart body has no file field named {FILE_FIELD!r}")
        return await upload.read()
    finally:
        await form.close()


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise BadRequest('the JSON body must be an object: {"image": "<base64>"} or {"url": "..."}')
    unknown = sorted(str(k) for k in document if k not in JSON_FIELDS)
    if unknown:
        shown = ", ".join(_excerpt(k, 24) for k in unknown[:5])
        raise BadRequest(f"unknown JSON field(s): {shown}; expected 'image' or 'url'")
    if len(document) != 1:
        raise BadRequest("the JSON body must carry exactly one of 'image' or 'url'")
    return document


async def _read_json(body: bytes, fetcher: ImageFetcher | None) -> bytes:
    document = _parse_json(body)
    if "url" in document:
        url = document["url"]
        if not isinstance(url, str):
            raise BadRequest("'url' must be a string")
        if fetcher is None:
            raise BadRequest("this server does not fetch image URLs (urls.enabled is false); send the image")
        return await fetcher.fetch(url)
    image = document["image"]
    if not isinstance(image, str):
        raise BadRequest("'image' must be a base64 string")
    if image.startswith("data:"):
        header, comma, image = image.partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadRequest("a data: URI must be base64 encoded (data:image/png;base64,...)")
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("'image' is not valid base64") from None
