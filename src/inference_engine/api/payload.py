"""Read what a request carries: an image (raw body, multipart ``file``, JSON base64 or URL),
zero-shot ``labels`` beside it, or the images or texts of an embedding request.

The byte cap is enforced while the body streams in, so a client cannot make the server buffer
more than ``max_bytes`` whatever ``Content-Length`` claims (or omits). Error messages never echo
the client's input back beyond a short, bounded excerpt.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from inference_engine.errors import BadRequest, ClientDisconnected, InvalidInput, PayloadTooLarge
from inference_engine.fetch import ImageFetcher

FILE_FIELD = "file"
LABELS_FIELD = "labels"
JSON_FIELDS = frozenset({"image", "url", LABELS_FIELD})
EMBED_FIELDS = frozenset({"images", "texts"})


@dataclass(frozen=True)
class ImageRequest:
    """One encoded image, and the zero-shot labels sent with it (``None``: the model's own)."""

    data: bytes
    labels: list[str] | None = None


@dataclass(frozen=True)
class EmbedRequest:
    """The encoded images or the texts of one embedding request (exactly one list is non-empty)."""

    images: list[bytes]
    texts: list[str]


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body exceeds the limit of {max_bytes} bytes")


def _excerpt(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


async def capped_stream(request: Request, max_bytes: int) -> AsyncGenerator[bytes, None]:
    """The request body, chunk by chunk, raising 413 as soon as it passes ``max_bytes``.

    Every route reads its body through here, so a client that hangs up mid-upload is 499
    (:class:`ClientDisconnected`, the client's doing) on all of them, rather than Starlette's
    ``ClientDisconnect`` escaping as a 500 with a traceback.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdecimal() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(max_bytes)
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise ClientDisconnected("the client disconnected before its request body arrived") from None


async def read_image_request(
    request: Request, max_bytes: int, fetcher: ImageFetcher | None = None
) -> ImageRequest:
    """The encoded image from whichever form the request carries it in, and any labels."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        files, fields = await _read_multipart(request, max_bytes, max_files=4)
        if not files:
            raise BadRequest(f"multipart body has no file field named {FILE_FIELD!r}")
        return ImageRequest(files[0], _labels_from_fields(fields))
    body = b"".join([chunk async for chunk in capped_stream(request, max_bytes)])
    if content_type.startswith("application/json"):
        return await _read_json(body, fetcher)
    return ImageRequest(body)


async def read_embed_request(request: Request, max_bytes: int, max_items: int) -> EmbedRequest:
    """Images (multipart ``file`` fields, raw body, or JSON ``images``) or JSON ``texts``."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        files, _ = await _read_multipart(request, max_bytes, max_files=max_items)
        if not files:
            raise BadRequest(f"multipart body has no file field named {FILE_FIELD!r}")
        return EmbedRequest(files, [])
    body = b"".join([chunk async for chunk in capped_stream(request, max_bytes)])
    if not content_type.startswith("application/json"):
        return EmbedRequest([body], [])
    document = _parse_object(body, EMBED_FIELDS, '{"images": ["<base64>", ...]} or {"texts": ["...", ...]}')
    if len(document) != 1:
        raise BadRequest("the JSON body must carry exactly one of 'images' or 'texts'")
    ((field, values),) = document.items()
    if not isinstance(values, list) or not values:
        raise BadRequest(f"'{field}' must be a non-empty list")
    if len(values) > max_items:
        raise InvalidInput(f"{len(values)} inputs in one request; the limit is {max_items}")
    if field == "texts":
        if not all(isinstance(text, str) for text in values):
            raise BadRequest("'texts' must be a list of strings")
        return EmbedRequest([], values)
    return EmbedRequest([decode_base64_image(value, "images") for value in values], [])


async def _read_multipart(
    request: Request, max_bytes: int, *, max_files: int
) -> tuple[list[bytes], list[str]]:
    """The ``file`` parts, in order, and the ``labels`` form fields."""
    parser = MultiPartParser(
        request.headers, capped_stream(request, max_bytes), max_files=max_files, max_fields=32
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from None
    try:
        files = [await u.read() for u in form.getlist(FILE_FIELD) if isinstance(u, UploadFile)]
        fields = [v for v in form.getlist(LABELS_FIELD) if isinstance(v, str)]
        return files, fields
    finally:
        await form.close()


def _labels_from_fields(fields: list[str]) -> list[str] | None:
    """Labels from form fields: repeated ``labels`` fields, or one field of comma-separated labels."""
    if not fields:
        return None
    if len(fields) == 1:
        return [label.strip() for label in fields[0].split(",") if label.strip()] or [""]
    return fields


#: The most predictions a request may ask for (``?top_k=``).
MAX_TOP_K = 1000


def query_top_k(request: Request) -> int | None:
    """``?top_k=N`` (1 to :data:`MAX_TOP_K`), or ``None`` for the model's default."""
    raw = request.query_params.get("top_k")
    if raw is None:
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdecimal() and len(text) <= 4) or not 1 <= int(text) <= MAX_TOP_K:
        raise InvalidInput(f"top_k: must be a whole number from 1 to {MAX_TOP_K}, not {raw[:20]!r}")
    return int(text)


def labels_from_query(values: list[str] | None) -> list[str] | None:
    """``?labels=a&labels=b`` or ``?labels=a,b``."""
    return _labels_from_fields(values or [])


def _parse_object(body: bytes, fields: frozenset[str], shape: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise BadRequest(f"the JSON body must be an object: {shape}")
    unknown = sorted(str(k) for k in document if k not in fields)
    if unknown:
        shown = ", ".join(_excerpt(k, 24) for k in unknown[:5])
        raise BadRequest(f"unknown JSON field(s): {shown}; the body's shape is {shape}")
    return document


async def _read_json(body: bytes, fetcher: ImageFetcher | None) -> ImageRequest:
    document = _parse_object(
        body, JSON_FIELDS, '{"image": "<base64>"} or {"url": "..."}, with optional "labels": [...]'
    )
    labels = document.pop(LABELS_FIELD, None)
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise BadRequest("'labels' must be a list of strings")
    if len(document) != 1:
        raise BadRequest("the JSON body must carry exactly one of 'image' or 'url'")
    if "url" in document:
        url = document["url"]
        if not isinstance(url, str):
            raise BadRequest("'url' must be a string")
        if fetcher is None:
            raise BadRequest("this server does not fetch image URLs (urls.enabled is false); send the image")
        return ImageRequest(await fetcher.fetch(url), labels)
    return ImageRequest(decode_base64_image(document["image"], "image"), labels)


def decode_base64_image(image: object, field: str) -> bytes:
    """An image given as base64 text or a ``data:`` URI."""
    if not isinstance(image, str):
        raise BadRequest(f"'{field}' must be base64 text")
    if image.startswith("data:"):
        header, comma, image = image.partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadRequest("a data: URI must be base64 encoded (data:image/png;base64,...)")
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"'{field}' is not valid base64") from None
