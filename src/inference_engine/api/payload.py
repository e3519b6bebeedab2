"""Read an image from a request: a multipart ``file`` field or the raw body, size-capped.

The cap is enforced while the body streams in, so a client cannot make the server buffer more
than ``max_bytes`` whatever ``Content-Length`` claims (or omits).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from inference_engine.errors import BadRequest, PayloadTooLarge

FILE_FIELD = "file"


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body exceeds the limit of {max_bytes} bytes")


async def capped_stream(request: Request, max_bytes: int) -> AsyncGenerator[bytes, None]:
    """The request body, chunk by chunk, raising 413 as soon as it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(max_bytes)
        if chunk:
            yield chunk


async def read_image_bytes(request: Request, max_bytes: int) -> bytes:
    """The encoded image from a multipart ``file`` field, or else the whole body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return b"".join([chunk async for chunk in capped_stream(request, max_bytes)])
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
