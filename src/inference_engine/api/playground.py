"""The browser playground: ``GET /`` and ``GET /playground`` serve one static page.

The page (``inference_engine/playground/``: HTML, one script, one stylesheet) is package data,
read once at start-up and served from memory, so a wheel install works offline and the page
makes no request to any other host. It talks to the public API like any client would.

Why a middleware rather than app routes: with ``auth.enabled`` every route needs a key, but a
browser cannot send one when it navigates to a page. The page and its assets are static and
public anyway (the same bytes ship in the wheel; no configuration, model or key is in them), so
:class:`PublicPlaygroundMiddleware` serves them ahead of access control (and rate limits, like
``/health``); every API call the page makes still carries the key the user types into it. With
``server.playground: false`` (the prod config) it is not installed and ``/`` is a plain ``404``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from inference_engine.api.errors import error_response

# The page loads its own script, stylesheet and previews (blob: URLs of the chosen image) and
# calls the API on the same origin; nothing else, and no inline script or style.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_ASSET_NAME = re.compile(r"^[a-z0-9_-]+\.(js|css)$")
_PUBLIC_PATH = re.compile(r"^(/|/playground|/playground/assets/[^/]+)$")


@dataclass(frozen=True)
class Asset:
    """One file of the page, with the validator a browser revalidates its cached copy against."""

    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file in the package's ``playground`` folder, by name."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("inference_engine").joinpath("playground").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in _CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[entry.name] = Asset(body, _CONTENT_TYPES[suffix], etag)
    return assets


def _serve(asset: Asset, request: Request, *, page: bool) -> Response:
    # The assets are revalidated on each load (a cheap 304); the page itself is never stored,
    # like every other response (the middleware's default), and gets the page's CSP.
    headers = {"etag": asset.etag}
    if page:
        headers["content-security-policy"] = PAGE_CSP
    else:
        headers["cache-control"] = "no-cache"
        if asset.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


def build_router() -> Router:
    """``GET /``, ``GET /playground`` and ``GET /playground/assets/{name}``.

    Plain Starlette routes, not FastAPI ones: they are reached from a middleware (below), ahead
    of FastAPI's own per-request machinery, and have nothing to put in the OpenAPI schema.
    """
    assets = load_assets()
    page = assets["index.html"]

    async def playground(request: Request) -> Response:
        return _serve(page, request, page=True)

    async def asset(request: Request) -> Response:
        name = str(request.path_params["name"])
        found = assets.get(name) if _ASSET_NAME.match(name) else None
        if found is None:
            return error_response(404, "not_found", f"no playground asset named {name[:64]!r}")
        return _serve(found, request, page=False)

    return Router(
        routes=[
            Route("/", playground, methods=["GET"]),
            Route("/playground", playground, methods=["GET"]),
            Route("/playground/assets/{name}", asset, methods=["GET"]),
        ]
    )


class PublicPlaygroundMiddleware:
    """Serve ``GET`` (and ``HEAD``) of the page and its assets from the playground router.

    Installed inside the request-context middleware (request id, security headers, metrics and
    the access log still apply) but outside access control, so the static page loads without a
    key. Everything else, including other methods on these paths, goes the usual way (and is a
    ``404``/``405`` there, after authentication).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.playground = build_router()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and _PUBLIC_PATH.match(scope["path"])
        ):
            await self.playground(scope, receive, send)
            return
        await self.app(scope, receive, send)
