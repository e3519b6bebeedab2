"""The SSRF-safe image fetcher: every rule, proven without touching any network but loopback.

Refusals are checked with IP literals and with a stub resolver that maps fake names to the
forbidden addresses, and a transport spy shows that no request was even attempted. The
positive paths talk to a small HTTP server this module starts on 127.0.0.1. An autouse guard
fails any test that connects to, or asks DNS about, anything that is not a loopback literal.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from inference_engine.errors import (
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    UrlFetchFailed,
    UrlRefused,
)
from inference_engine.fetch import ImageFetcher, address_refusal, ip_literal, system_resolve
from inference_engine.settings import UrlSettings
from tests.helpers import cat_jpeg, coffee_png

pytestmark = pytest.mark.timeout(5)

CAT = cat_jpeg()
COFFEE = coffee_png()
PUBLIC = "93.184.215.14"  # a global address: only ever handed to mock transports, never dialled


# --------------------------------------------------------------------------- network guard


class NetworkGuard:
    """What the guard saw: every connect, and every attempt beyond loopback."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []
        self.violations: list[str] = []


@pytest.fixture(autouse=True)
def guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    """Fail the test if anything connects to, or resolves, something other than a loopback literal."""
    seen = NetworkGuard()
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple):
            seen.connects.append((address[0], address[1]))
            if not ipaddress.ip_address(address[0]).is_loopback:
                seen.violations.append(f"connect {address[0]}")
                raise ConnectionRefusedError(f"test guard: no connection to {address[0]}")
        real_connect(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            loopback = ipaddress.ip_address(name).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            seen.violations.append(f"getaddrinfo {name}")
            raise socket.gaierror(socket.EAI_NONAME, "test guard: no DNS")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield seen
    assert seen.violations == [], "the test touched the network beyond loopback"


# --------------------------------------------------------------------------- loopback server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str | None, str]] = []  # (path, Host header, peer address)
        self.stop = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, *, length: bool = True, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host"), self.client_address[0]))
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        try:
            if path == "/cat.jpg":
                self._send(200, CAT, Content_Type="image/jpeg")
            elif path == "/coffee.png":
                self._send(200, COFFEE, Content_Type="image/png")
            elif path == "/cat-stream":  # HTTP/1.0, no Content-Length: the body ends at close
                self._send(200, CAT, length=False, Content_Type="image/jpeg")
            elif path.startswith("/hop/"):
                left = int(path.removeprefix("/hop/"))
                if left:
                    self._send(302, b"", Location=f"/hop/{left - 1}")
                else:
                    self._send(200, CAT, Content_Type="image/jpeg")
            elif path == "/to":
                status = int(query.get("status", "302"))
                if "location" in query:
                    self._send(status, b"", Location=query["location"])
                else:
                    self._send(status, b"")
            elif path == "/long-redirect":
                self._send(302, b"", Location="/" + "a" * 3000)
            elif path == "/loop":
                self._send(302, b"", Location="/loop")
            elif path == "/status":
                self._send(int(query["code"]), b"nope", Content_Type="text/plain")
            elif path == "/slow":
                self.server.stop.wait(3)
                self._send(200, CAT, Content_Type="image/jpeg")
            elif path == "/trickle":  # every byte comes well within the read timeout
                self.send_response(200)
                self.send_header("Content-Length", str(len(CAT)))
                self.end_headers()
                for byte in CAT[:40]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if self.server.stop.wait(0.1):
                        return
            elif path == "/huge-declared":
                self.send_response(200)
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                self.wfile.write(CAT[:1000])
            elif path == "/huge-stream":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(CAT[:1000])
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            elif path == "/page.html":
                self._send(200, b"<!doctype html><title>hi</title>", Content_Type="text/html")
            elif path == "/lying.jpg":
                self._send(200, b"<!doctype html><title>not a cat</title>", Content_Type="image/jpeg")
            elif path == "/gzip":
                self._send(200, gzip.compress(CAT), Content_Type="image/jpeg", Content_Encoding="gzip")
            elif path == "/empty":
                self._send(200, b"", Content_Type="image/jpeg")
            elif path == "/garbage":
                self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
            else:
                self._send(404, b"not found")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher hung up on purpose (byte cap, timeout)


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.stop.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(2)


@pytest.fixture
def seen(server: _Server) -> list[tuple[str, str | None, str]]:
    server.seen.clear()
    return server.seen


def port_of(server: _Server) -> int:
    return int(server.server_address[1])


# --------------------------------------------------------------------------- spies


class StubResolver:
    """Maps fake names to canned answers and records every question."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {}
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


class SpyTransport(httpx.AsyncBaseTransport):
    """Records every request; forwards to ``inner``, or fails when no request was expected."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        handler: Callable[[httpx.Request], httpx.Response] | None = None,
    ) -> None:
        self.inner = inner
        self.handler = handler
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.handler is not None:
            return self.handler(request)
        if self.inner is None:
            raise AssertionError(f"no request expected, got {request.url}")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()


def loopback_spy() -> SpyTransport:
    return SpyTransport(httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0)))


def jpeg_response(request: httpx.Request | None = None) -> httpx.Response:
    """A streamed (not pre-read) JPEG answer, as a real transport gives it."""
    return httpx.Response(200, headers={"Content-Length": str(len(CAT))}, stream=httpx.ByteStream(CAT))


def mock(handler: Callable[[httpx.Request], httpx.Response] = jpeg_response) -> SpyTransport:
    """A transport that never dials: every request is answered by ``handler``."""
    return SpyTransport(handler=handler)


def settings(**overrides: Any) -> UrlSettings:
    return UrlSettings(**{"enabled": True, **overrides})


def images_test(server: _Server, path: str = "/cat.jpg") -> str:
    return f"http://images.test:{port_of(server)}{path}"


LOOPBACK_NAME = {"images.test": ["127.0.0.1"]}


async def refused(url: str, **overrides: Any) -> str:
    """Fetch ``url`` expecting ``UrlRefused`` with neither a DNS question nor a request."""
    resolver, transport = StubResolver(), SpyTransport()
    async with ImageFetcher(settings(**overrides), resolve=resolver, transport=transport) as fetcher:
        with pytest.raises(UrlRefused) as caught:
            await fetcher.fetch(url)
    assert resolver.calls == []
    assert transport.requests == []
    return caught.value.message


# --------------------------------------------------------------------------- URL shape


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://images.test/cat.jpg",
        "gopher://images.test:70/_GET",
        "data:image/jpeg;base64,/9j/4AAQ",
        "javascript:alert(1)",
        "images.test/cat.jpg",
        "//images.test/cat.jpg",
        "",
        "http:///cat.jpg",
        "http://[::1/cat.jpg",
        "http://images.test:99999/cat.jpg",
        "http://a%20b/cat.jpg",
        "http://[fe80::1%25eth0]/cat.jpg",
    ],
)
async def test_only_well_formed_http_and_https_urls_are_fetched(url: str) -> None:
    await refused(url)


@pytest.mark.parametrize("url", ["http://admin:hunter2@images.test/cat.jpg", "https://admin@images.test/"])
async def test_urls_with_user_info_are_refused_without_echoing_it(url: str) -> None:
    message = await refused(url)
    assert "hunter2" not in message
    assert "admin" not in message


async def test_overlong_urls_are_refused_and_not_echoed() -> None:
    url = "http://images.test/" + "a" * 3000
    message = await refused(url)
    assert "2048" in message
    assert len(message) < 250


async def test_a_disabled_fetcher_refuses_everything() -> None:
    message = await refused("http://images.test/cat.jpg", enabled=False)
    assert "disabled" in message


# --------------------------------------------------------------------------- host allow-list


@pytest.mark.parametrize(
    ("patterns", "host", "allowed"),
    [
        (["images.test"], "images.test", True),
        (["images.test"], "IMAGES.Test", True),
        (["IMAGES.TEST"], "images.test", True),
        (["images.test"], "images.test.", True),
        (["images.test"], "evil.test", False),
        (["images.test"], "sub.images.test", False),
        (["images.test"], "images.test.evil.test", False),
        (["*.example.com"], "cdn.example.com", True),
        (["*.example.com"], "a.b.example.com", True),
        (["*.Example.COM"], "cdn.example.com", True),
        (["*.example.com"], "example.com", False),
        (["*.example.com"], "evilexample.com", False),
        (["*.example.com"], "example.com.evil.test", False),
        (["xn--bcher-kva.de"], "bücher.de", True),
        ([], "anything.test", True),
    ],
)
async def test_the_host_allow_list(patterns: list[str], host: str, allowed: bool) -> None:
    url = f"http://{host}/cat.jpg"
    if not allowed:
        message = await refused(url, allowed_hosts=patterns)
        assert host.lower() in message
        return
    resolver = StubResolver()  # knows no names: an allowed host gets as far as DNS, no further
    async with ImageFetcher(
        settings(allowed_hosts=patterns), resolve=resolver, transport=SpyTransport()
    ) as f:
        with pytest.raises(UrlFetchFailed, match="cannot resolve"):
            await f.fetch(url)
    assert len(resolver.calls) == 1


# --------------------------------------------------------------------------- addresses

PRIVATE_LITERALS = [
    ("127.0.0.1", "loopback"),
    ("127.1", "loopback"),
    ("0x7f.1", "loopback"),
    ("0X7F.0.0.1", "loopback"),
    ("0x7f000001", "loopback"),
    ("2130706433", "loopback"),
    ("0177.0.0.1", "not a valid URL"),  # httpx itself rejects dotted-quad octal
    ("0177.1", "loopback"),
    ("127.0.0.1.", "loopback"),
    ("[::1]", "loopback"),
    ("[::ffff:127.0.0.1]", "loopback"),
    ("[::ffff:7f00:1]", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("[fc00::1]", "private"),
    ("[fd12:3456::1]", "private"),
    ("169.254.1.1", "link-local"),
    ("[fe80::1]", "link-local"),
    ("100.64.0.1", "shared"),
]
ALWAYS_REFUSED_LITERALS = [
    ("169.254.169.254", "metadata"),
    ("2852039166", "metadata"),
    ("0xa9.0xfe.0xa9.0xfe", "metadata"),
    ("0251.0376.43518", "metadata"),
    ("[::ffff:169.254.169.254]", "metadata"),
    ("[2002:a9fe:a9fe::1]", "metadata"),  # 6to4 wrapping the metadata address
    ("[fd00:ec2::254]", "metadata"),
    ("100.100.100.200", "metadata"),
    ("169.254.170.2", "metadata"),
    ("0.0.0.0", "unspecified"),
    ("0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("[::]", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("[ff02::1]", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
]


@pytest.mark.parametrize(("host", "kind"), PRIVATE_LITERALS + ALWAYS_REFUSED_LITERALS)
async def test_non_public_ip_literals_are_refused_before_connecting(host: str, kind: str) -> None:
    message = await refused(f"http://{host}/latest/meta-data/")
    assert kind in message


@pytest.mark.parametrize(("host", "kind"), ALWAYS_REFUSED_LITERALS)
async def test_metadata_and_unroutable_literals_are_refused_even_on_private_networks(
    host: str, kind: str
) -> None:
    message = await refused(f"http://{host}/latest/meta-data/", allow_private_networks=True)
    assert kind in message


@pytest.mark.parametrize(
    "host", ["1.2.3.4.5", "256.1.1.1", "1.2.3.256", "08.1.1.1", "0x100.1.1.1", "1.2.0x10000", "09.1", "cdn.7"]
)
async def test_malformed_numeric_hosts_are_refused(host: str) -> None:
    assert "not a valid" in await refused(f"http://{host}/cat.jpg")


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("[fd12::1]", "[fd12::1]"),
        ("169.254.1.1", "169.254.1.1"),
        ("100.64.0.1", "100.64.0.1"),
        ("0x7f.1", "127.0.0.1"),
    ],
)
async def test_private_literals_are_allowed_only_with_allow_private_networks(host: str, address: str) -> None:
    transport = mock()
    async with ImageFetcher(settings(allow_private_networks=True), transport=transport) as fetcher:
        assert await fetcher.fetch(f"http://{host}/cat.jpg") == CAT
    assert [str(r.url) for r in transport.requests] == [f"http://{address}/cat.jpg"]


def test_address_rules_directly() -> None:
    ip = ipaddress.ip_address
    assert address_refusal(ip(PUBLIC), allow_private=False) is None
    assert address_refusal(ip("2606:4700:4700::1111"), allow_private=False) is None
    assert address_refusal(ip("::ffff:8.8.8.8"), allow_private=False) is None
    assert address_refusal(ip("192.168.0.1"), allow_private=True) is None
    assert address_refusal(ip("169.254.169.254"), allow_private=True) == "a cloud metadata address"
    assert ip_literal("images.test") is None
    assert ip_literal("0x7f.1") == ip("127.0.0.1")
    assert ip_literal("1.2.65535") == ip("1.2.255.255")


@pytest.mark.parametrize(
    ("answer", "private_ok", "kind"),
    [
        (["10.1.2.3"], False, "private"),
        (["127.0.0.1"], False, "loopback"),
        ([PUBLIC, "10.0.0.5"], False, "private"),  # every answer is checked, not just the first
        (["2606:4700:4700::1111", "fe80::1%eth0"], False, "link-local"),
        (["169.254.169.254"], True, "metadata"),
        ([PUBLIC, "fd00:ec2::254"], True, "metadata"),
        (["100.100.100.200"], True, "metadata"),
        (["::ffff:169.254.169.254"], True, "metadata"),
        (["0.0.0.0"], True, "unspecified"),
    ],
)
async def test_resolved_addresses_are_checked_before_connecting(
    answer: list[str], private_ok: bool, kind: str
) -> None:
    resolver, transport = StubResolver({"innocent.test": answer}), SpyTransport()
    async with ImageFetcher(
        settings(allow_private_networks=private_ok), resolve=resolver, transport=transport
    ) as fetcher:
        with pytest.raises(UrlRefused, match=kind) as caught:
            await fetcher.fetch("http://innocent.test/cat.jpg")
    assert "innocent.test" in caught.value.message
    assert resolver.calls == [("innocent.test", 80)]
    assert transport.requests == []


@pytest.mark.parametrize("answer", [[], ["not-an-address"]])
async def test_useless_dns_answers_fail_the_fetch(answer: list[str]) -> None:
    async with ImageFetcher(
        settings(), resolve=StubResolver({"odd.test": answer}), transport=SpyTransport()
    ) as fetcher:
        with pytest.raises(UrlFetchFailed, match="cannot resolve"):
            await fetcher.fetch("http://odd.test/cat.jpg")


async def test_the_system_resolver_returns_addresses() -> None:
    assert await system_resolve("127.0.0.1", 80) == ["127.0.0.1"]


# --------------------------------------------------------------------------- how requests are sent


async def test_https_goes_to_the_checked_address_with_the_real_name_for_tls() -> None:
    transport = mock()
    resolver = StubResolver({"cdn.example.com": [PUBLIC]})
    async with ImageFetcher(settings(), resolve=resolver, transport=transport) as fetcher:
        assert await fetcher.fetch("https://cdn.example.com/img/cat.jpg?size=l#top") == CAT
    (request,) = transport.requests
    assert str(request.url) == f"https://{PUBLIC}/img/cat.jpg?size=l"
    assert request.headers["Host"] == "cdn.example.com"
    assert request.extensions["sni_hostname"] == "cdn.example.com"
    assert request.headers["Accept-Encoding"] == "identity"


async def test_ipv6_answers_are_bracketed_and_a_failed_address_falls_back_to_the_next() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "2606:4700:4700::1111":
            raise httpx.ConnectError("no route to host")
        return jpeg_response()

    transport = mock(answer)
    resolver = StubResolver({"cdn.example.com": ["2606:4700:4700::1111", PUBLIC]})
    async with ImageFetcher(settings(), resolve=resolver, transport=transport) as fetcher:
        assert await fetcher.fetch("http://cdn.example.com:8080/cat.jpg") == CAT
    assert [str(r.url) for r in transport.requests] == [
        "http://[2606:4700:4700::1111]:8080/cat.jpg",
        f"http://{PUBLIC}:8080/cat.jpg",
    ]
    assert {r.headers["Host"] for r in transport.requests} == {"cdn.example.com:8080"}


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx.ConnectError("refused"), "cannot connect"),
        (httpx.ConnectTimeout("slow"), "connecting timed out"),
        (httpx.ReadTimeout("slow"), "too slow"),
        (httpx.RemoteProtocolError("bad"), "transport error"),
    ],
)
async def test_transport_failures_become_fetch_failures(error: httpx.HTTPError, reason: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    resolver = StubResolver({"cdn.example.com": [PUBLIC]})
    async with ImageFetcher(settings(), resolve=resolver, transport=mock(fail)) as fetcher:
        with pytest.raises(UrlFetchFailed, match=reason):
            await fetcher.fetch("http://cdn.example.com/cat.jpg")


# --------------------------------------------------------------------------- against a loopback server


async def test_fetches_an_image_from_the_checked_address(
    server: _Server, seen: list[Any], guard: NetworkGuard
) -> None:
    resolver = StubResolver(LOOPBACK_NAME)
    config = settings(allow_private_networks=True, allowed_hosts=["images.test"])
    async with ImageFetcher(config, resolve=resolver) as fetcher:
        assert await fetcher.fetch(images_test(server, "/cat.jpg?size=large#frag")) == CAT
    assert resolver.calls == [("images.test", port_of(server))]
    assert seen == [("/cat.jpg?size=large", f"images.test:{port_of(server)}", "127.0.0.1")]
    assert guard.connects == [("127.0.0.1", port_of(server))]  # the guard sees real connections


def test_the_guard_stops_connections_beyond_loopback(guard: NetworkGuard) -> None:
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="test guard"):
        sock.connect(("192.0.2.1", 9))  # refused by the guard itself: nothing is sent
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("example.com", 80)
    assert guard.violations == ["connect 192.0.2.1", "getaddrinfo example.com"]
    guard.violations.clear()


async def test_an_ip_literal_with_the_default_resolver(server: _Server) -> None:
    config = settings(allow_private_networks=True, allowed_hosts=["127.0.0.1"])
    async with ImageFetcher(config) as fetcher:
        assert await fetcher.fetch(f"http://127.0.0.1:{port_of(server)}/coffee.png") == COFFEE


async def test_concurrent_fetches_keep_their_own_bodies(server: _Server) -> None:
    config = settings(allow_private_networks=True)
    async with ImageFetcher(config, resolve=StubResolver(LOOPBACK_NAME)) as fetcher:
        results = [fetcher.fetch(images_test(server, path)) for path in ("/cat.jpg", "/coffee.png") * 3]
        assert await asyncio.gather(*results) == [CAT, COFFEE] * 3


async def test_loopback_is_refused_without_allow_private_networks(server: _Server, seen: list[Any]) -> None:
    async with ImageFetcher(settings(), resolve=StubResolver(LOOPBACK_NAME)) as fetcher:
        with pytest.raises(UrlRefused, match="loopback"):
            await fetcher.fetch(images_test(server))
        with pytest.raises(UrlRefused, match="loopback"):
            await fetcher.fetch(f"http://127.0.0.1:{port_of(server)}/cat.jpg")
    assert seen == []


async def test_dns_is_asked_once_per_hop_so_a_rebinding_answer_is_never_used(server: _Server) -> None:
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    async with ImageFetcher(settings(allow_private_networks=True), resolve=rebinding) as fetcher:
        assert await fetcher.fetch(images_test(server)) == CAT
    assert calls == ["images.test"]


@pytest.mark.parametrize(("hops", "limit"), [(3, 3), (1, 1), (0, 0)])
async def test_redirects_are_followed_up_to_the_limit(server: _Server, hops: int, limit: int) -> None:
    resolver, transport = StubResolver(LOOPBACK_NAME), loopback_spy()
    config = settings(allow_private_networks=True, max_redirects=limit)
    async with ImageFetcher(config, resolve=resolver, transport=transport) as fetcher:
        assert await fetcher.fetch(images_test(server, f"/hop/{hops}")) == CAT
    assert len(resolver.calls) == hops + 1  # every hop is resolved and checked again
    assert [r.url.path for r in transport.requests] == [f"/hop/{n}" for n in range(hops, -1, -1)]


@pytest.mark.parametrize(("path", "limit"), [("/hop/3", 2), ("/hop/1", 0), ("/loop", 3)])
async def test_too_many_redirects_fail(server: _Server, path: str, limit: int) -> None:
    config = settings(allow_private_networks=True, max_redirects=limit)
    async with ImageFetcher(config, resolve=StubResolver(LOOPBACK_NAME)) as fetcher:
        with pytest.raises(UrlFetchFailed, match=f"redirected more than {limit} times"):
            await fetcher.fetch(images_test(server, path))


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize(
    "location", ["cat.jpg", "./cat.jpg", "../cat.jpg", "/cat.jpg", "//images.test:{port}/cat.jpg"]
)
async def test_relative_and_absolute_redirects(server: _Server, status: int, location: str) -> None:
    target = quote(location.format(port=port_of(server)), safe="")
    async with ImageFetcher(settings(allow_private_networks=True), resolve=StubResolver(LOOPBACK_NAME)) as f:
        assert await f.fetch(images_test(server, f"/to?status={status}&location={target}")) == CAT


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/to?location=" + quote("http://169.254.169.254/latest/meta-data/", safe=""), "metadata"),
        ("/to?location=" + quote("http://[fd00:ec2::254]/latest/meta-data/", safe=""), "metadata"),
        ("/to?location=" + quote("http://evil.test/cat.jpg", safe=""), "not in the allowed hosts"),
        ("/to?location=" + quote("file:///etc/passwd", safe=""), "only http and https"),
        ("/to?location=" + quote("gopher://images.test/", safe=""), "only http and https"),
        ("/to?location=" + quote("http://user:pw@images.test/cat.jpg", safe=""), "user name or password"),
        ("/long-redirect", "longer than 2048"),
    ],
)
async def test_every_redirect_hop_is_checked_again(
    server: _Server, seen: list[Any], path: str, reason: str
) -> None:
    resolver, transport = StubResolver(LOOPBACK_NAME), loopback_spy()
    # The metadata addresses are even on the allow-list: that must not let them through.
    allowed = ["images.test", "169.254.169.254", "fd00:ec2::254"]
    config = settings(allow_private_networks=True, allowed_hosts=allowed)
    async with ImageFetcher(config, resolve=resolver, transport=transport) as fetcher:
        with pytest.raises(UrlRefused, match=reason) as caught:
            await fetcher.fetch(images_test(server, path))
    assert len(caught.value.message) < 300
    assert [r.url.host for r in transport.requests] == ["127.0.0.1"]  # only the first hop was sent
    assert len(seen) == 1
    assert [host for host, _ in resolver.calls] == ["images.test"]


@pytest.mark.parametrize("location", ["http://10.0.0.1/cat.jpg", "http://[::1]/", "http://internal.test/"])
async def test_a_public_host_cannot_redirect_into_the_private_network(location: str) -> None:
    transport = mock(lambda request: httpx.Response(302, headers={"Location": location}))
    resolver = StubResolver({"cdn.example.com": [PUBLIC], "internal.test": ["192.168.0.10"]})
    async with ImageFetcher(settings(), resolve=resolver, transport=transport) as fetcher:
        with pytest.raises(UrlRefused, match=r"private|loopback"):
            await fetcher.fetch("http://cdn.example.com/cat.jpg")
    assert [str(r.url) for r in transport.requests] == [f"http://{PUBLIC}/cat.jpg"]


async def test_an_unparsable_redirect_fails_without_following_it() -> None:
    transport = mock(lambda request: httpx.Response(302, headers={"Location": "http://[::1/"}))
    resolver = StubResolver({"cdn.example.com": [PUBLIC]})
    async with ImageFetcher(settings(), resolve=resolver, transport=transport) as fetcher:
        with pytest.raises(UrlFetchFailed, match="transport error"):
            await fetcher.fetch("http://cdn.example.com/cat.jpg")
    assert len(transport.requests) == 1


@pytest.mark.parametrize("code", [400, 404, 500, 503])
async def test_non_2xx_answers_fail_with_their_status(server: _Server, code: int) -> None:
    async with ImageFetcher(settings(allow_private_networks=True), resolve=StubResolver(LOOPBACK_NAME)) as f:
        with pytest.raises(UrlFetchFailed, match=f"HTTP {code}"):
            await f.fetch(images_test(server, f"/status?code={code}"))


async def test_a_redirect_without_location_fails(server: _Server) -> None:
    async with ImageFetcher(settings(allow_private_networks=True), resolve=StubResolver(LOOPBACK_NAME)) as f:
        with pytest.raises(UrlFetchFailed, match="HTTP 302"):
            await f.fetch(images_test(server, "/to?status=302"))


async def test_error_messages_do_not_echo_long_urls(server: _Server) -> None:
    url = images_test(server, "/" + "x" * 1500)
    async with ImageFetcher(settings(allow_private_networks=True), resolve=StubResolver(LOOPBACK_NAME)) as f:
        with pytest.raises(UrlFetchFailed, match="HTTP 404") as caught:
            await f.fetch(url)
    assert len(caught.value.message) < 200


async def test_a_slow_server_hits_the_read_timeout(server: _Server) -> None:
    config = settings(allow_private_networks=True, read_timeout_s=0.3)
    async with ImageFetcher(config, resolve=StubResolver(LOOPBACK_NAME)) as fetcher:
        started = time.monotonic()
        with pytest.raises(UrlFetchFailed):
            await fetcher.fetch(images_test(server, "/slow"))
    assert time.monotonic() - started < 1.5


async def test_a_trickling_body_hits_the_overall_deadline(server: _Server) -> None:
    config = settings(allow_private_networks=True, read_timeout_s=0.5)
    async with ImageFetcher(config, resolve=StubResolver(LOOPBACK_NAME)) as fetcher:
        started = time.monotonic()
        with pytest.raises(UrlFetchFailed, match=r"took longer than 0\.5s"):
            await fetcher.fetch(images_test(server, "/trickle"))
    assert time.monotonic() - started < 1.5


async def test_a_closed_port_fails_to_connect() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        config = settings(allow_private_networks=True, connect_timeout_s=1)
        async with ImageFetcher(config, resolve=StubResolver(LOOPBACK_NAME)) as fetcher:
            with pytest.raises(UrlFetchFailed, match="cannot connect"):
                await fetcher.fetch(f"http://images.test:{port}/cat.jpg")


async def test_a_server_that_does_not_speak_http_fails(server: _Server) -> None:
    async with ImageFetcher(settings(allow_private_networks=True), resolve=StubResolver(LOOPBACK_NAME)) as f:
        with pytest.raises(UrlFetchFailed, match="transport error"):
            await f.fetch(images_test(server, "/garbage"))


@pytest.mark.parametrize("path", ["/huge-declared", "/huge-stream"])
async def test_the_byte_cap_stops_large_downloads(server: _Server, path: str) -> None:
    config = settings(allow_private_networks=True, max_bytes=100_000)
    async with ImageFetcher(config, resolve=StubResolver(LOOPBACK_NAME)) as fetcher:
        started = time.monotonic()
        with pytest.raises(PayloadTooLarge, match="larger than 100000 bytes"):
            await fetcher.fetch(images_test(server, path))
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("path", ["/cat.jpg", "/cat-stream"])
async def test_the_byte_cap_is_exact(server: _Server, path: str) -> None:
    for cap, fits in ((len(CAT), True), (len(CAT) - 1, False)):
        config = settings(allow_private_networks=True, max_bytes=cap)
        async with ImageFetcher(config, resolve=StubResolver(LOOPBACK_NAME)) as fetcher:
            if fits:
                assert await fetcher.fetch(images_test(server, path)) == CAT
            else:
                with pytest.raises(PayloadTooLarge):
                    await fetcher.fetch(images_test(server, path))


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/page.html", UnsupportedMediaType),
        ("/lying.jpg", UnsupportedMediaType),  # the Content-Type is not trusted
        ("/empty", InvalidInput),
        ("/gzip", UrlFetchFailed),  # never inflated: a small body could expand without bound
    ],
)
async def test_bodies_that_are_not_images_are_refused(
    server: _Server, path: str, error: type[Exception]
) -> None:
    async with ImageFetcher(settings(allow_private_networks=True), resolve=StubResolver(LOOPBACK_NAME)) as f:
        with pytest.raises(error):
            await f.fetch(images_test(server, path))
