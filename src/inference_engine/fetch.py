"""Fetch an image by URL without letting the URL reach places it must not (SSRF).

A URL supplied by a client makes *this server* open a connection, so every hop is checked
before anything is sent: the scheme, user-info, length, the host allow-list, and every address
the host resolves to (cloud metadata addresses are refused always; loopback, private and
link-local ones unless ``allow_private_networks``). The request then goes to the very address
that was checked, with the real host in ``Host`` and in TLS SNI, so a second DNS answer cannot
swap in another target (DNS rebinding). Redirects are followed by hand, each one re-checked,
and the download is bounded in time and bytes before its magic bytes are sniffed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from types import TracebackType

import httpx

from inference_engine.errors import PayloadTooLarge, UrlFetchFailed, UrlRefused
from inference_engine.imaging import sniff_format
from inference_engine.settings import UrlSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_LENGTH = 2048
_SHOWN_CHARS = 100  # error messages go back to the client: never echo an unbounded string
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Refused even with ``allow_private_networks``: they hand out cloud credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle ...
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
    )
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # connecting to 0.x reaches this host on Linux
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_HOST_CHARS = re.compile(r"[a-z0-9._:-]+")
_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+")


def _show(text: str) -> str:
    """A client-controlled string cut to a length that is safe to put in a message."""
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _number(part: str) -> int:
    """One ``inet_aton`` part: ``0x`` hex, leading-zero octal, or decimal; ``ValueError`` else."""
    if not _NUMBER.fullmatch(part):
        raise ValueError(part)
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    return int(part, 8 if len(part) > 1 and part.startswith("0") else 10)


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, or ``None`` when it is a name to resolve.

    Besides the usual forms this reads those ``inet_aton`` accepts (``0x7f.1``, ``2130706433``,
    ``0177.0.0.1``): browsers and libc treat them as addresses, so they must be checked as
    addresses rather than sent to DNS. A host ending in a number that is no valid address is
    refused, as the URL standard does.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    parts = host.lower().removesuffix(".").split(".")
    if not _NUMBER.fullmatch(parts[-1]):
        return None
    try:
        *head, last = [_number(part) for part in parts]
    except ValueError:
        raise UrlRefused(f"the host {_show(host)!r} is not a valid IPv4 address") from None
    if len(head) > 3 or any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        raise UrlRefused(f"the host {_show(host)!r} is not a valid IPv4 address")
    return ipaddress.IPv4Address(sum(v << (24 - 8 * i) for i, v in enumerate(head)) + last)


def address_refusal(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Why a connection to ``ip`` is refused, or ``None`` when it is allowed."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
    # 6to4 embeds an IPv4 address that a relay would forward to: judge both.
    embedded = ip.sixtofour if isinstance(ip, ipaddress.IPv6Address) else None
    for addr in (a for a in (ip, embedded) if a is not None):
        if addr in METADATA_ADDRESSES:
            return "a cloud metadata address"
        if addr.is_unspecified or addr in _THIS_NETWORK:
            return "an unspecified address"
        if addr.is_multicast:
            return "a multicast address"
        kind = _private_kind(addr)
        if kind is None and (addr.is_reserved or not addr.is_global):
            return "a reserved address"
        if kind is not None and not allow_private:
            return f"a {kind} address"
    return None


def _private_kind(addr: IPAddress) -> str | None:
    """The kind of a local-network address, which ``allow_private_networks`` may allow."""
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr in _SHARED:
        return "shared (carrier-grade NAT)"
    return "private" if addr.is_private and not addr.is_reserved else None


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (TCP), in its preferred order."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


class ImageFetcher:
    """Downloads images by URL under :class:`UrlSettings`; one instance serves many fetches.

    ``resolve`` replaces DNS (tests use it to map fake names); ``transport`` replaces the
    network below httpx (tests use it to prove no connection was made).
    """

    def __init__(
        self,
        settings: UrlSettings,
        *,
        resolve: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._resolve: Resolver = resolve or system_resolve
        self._allowed = [h.lower().removesuffix(".") for h in settings.allowed_hosts]
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            trust_env=False,  # a proxy from the environment would connect somewhere unchecked
            # No pooled connections: a TLS connection verified for one name must never be
            # reused for another name that resolved to the same address.
            limits=httpx.Limits(max_keepalive_connections=0),
            transport=transport,
        )

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client and any connection it still holds."""
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        """The image at ``url``, after every check; raises ``UrlRefused`` for a forbidden URL,
        ``UrlFetchFailed`` for a failed download, ``PayloadTooLarge`` past ``max_bytes`` and
        ``UnsupportedMediaType`` when the bytes are not an image."""
        if not self.settings.enabled:
            raise UrlRefused("fetching images by URL is disabled on this server")
        seconds = self.settings.read_timeout_s
        try:
            async with asyncio.timeout(seconds):
                data = await self._follow(url)
        except TimeoutError:
            raise UrlFetchFailed(f"fetching {_show(url)!r} took longer than {seconds:g}s") from None
        sniff_format(data)
        return data

    async def _follow(self, url: str) -> bytes:
        """Fetch ``url``, following up to ``max_redirects`` redirects, each one re-checked."""
        current = self._check_url(url)
        for _ in range(self.settings.max_redirects + 1):
            result = await self._get(current)
            if isinstance(result, bytes):
                return result
            try:
                target = str(current.join(result))
            except httpx.InvalidURL:  # httpx itself already rejects most of these
                raise UrlRefused(f"the redirect to {_show(result)!r} is not a valid URL") from None
            current = self._check_url(target)
        raise UrlFetchFailed(f"{_show(url)!r} redirected more than {self.settings.max_redirects} times")

    def _check_url(self, url: str) -> httpx.URL:
        """Parse ``url`` and apply the rules that need no network: scheme, user-info, host."""
        if len(url) > MAX_URL_LENGTH:
            raise UrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters: {_show(url)!r}")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise UrlRefused(f"{_show(url)!r} is not a valid URL") from None
        if parsed.scheme not in _DEFAULT_PORTS:
            raise UrlRefused(f"only http and https URLs are fetched, not {_show(url)!r}")
        if parsed.userinfo:
            raise UrlRefused("URLs with a user name or password are not fetched")
        host = parsed.raw_host.decode("ascii").lower()
        if not host or not _HOST_CHARS.fullmatch(host):
            raise UrlRefused(f"{_show(url)!r} has no valid host")
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise UrlRefused(f"{_show(url)!r} has an invalid port")
        if self._allowed and not self._host_allowed(host.removesuffix(".")):
            raise UrlRefused(f"the host {_show(host)!r} is not in the allowed hosts")
        return parsed

    def _host_allowed(self, host: str) -> bool:
        """Exact match, or ``*.example.com`` matching any name below ``example.com`` (not itself)."""
        return any(
            host.endswith(pattern[1:]) if pattern.startswith("*.") else host == pattern
            for pattern in self._allowed
        )

    async def _addresses(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` stands for, each checked; one bad address refuses them all."""
        literal = ip_literal(host)
        if literal is not None:
            found = [literal]
        else:
            try:
                names = await self._resolve(host, port)
                found = [ipaddress.ip_address(name.partition("%")[0]) for name in names]
            except (OSError, ValueError) as exc:
                raise UrlFetchFailed(f"cannot resolve {_show(host)!r}: {_show(str(exc))}") from None
            if not found:
                raise UrlFetchFailed(f"cannot resolve {_show(host)!r}: no addresses")
        allow_private = self.settings.allow_private_networks
        for ip in found:
            reason = address_refusal(ip, allow_private=allow_private)
            if reason is not None:
                raise UrlRefused(f"the host {_show(host)!r} resolves to {ip}, {reason}")
        return list(dict.fromkeys(found))

    async def _get(self, url: httpx.URL) -> str | bytes:
        """One checked hop: the redirect's Location (``str``) or the body (``bytes``).

        The request goes to a checked address, never to the name, so DNS is asked once per hop
        and its answer is the one that was vetted. Addresses are tried in resolver order.
        """
        host = url.raw_host.decode("ascii")
        port = url.port or _DEFAULT_PORTS[url.scheme]
        addresses = await self._addresses(host, port)
        shown = f"[{host}]" if ":" in host else host
        headers = {
            "Host": shown if url.port is None else f"{shown}:{port}",
            "Accept": "image/*",
            "Accept-Encoding": "identity",  # decoding gzip would let a small body expand unbounded
        }
        # TLS sends and verifies the real name, though the socket goes to the checked address.
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        for index, ip in enumerate(addresses):
            target = httpx.URL(scheme=url.scheme, host=str(ip), port=port, raw_path=url.raw_path)
            request = self._client.build_request("GET", target, headers=headers, extensions=extensions)
            try:
                return await self._send(request, url)
            except httpx.ConnectError as exc:
                if index == len(addresses) - 1:
                    raise UrlFetchFailed(f"cannot connect to {_show(host)!r}: {_show(str(exc))}") from None
            except httpx.HTTPError as exc:
                raise UrlFetchFailed(f"fetching {_show(str(url))!r} failed: {_reason(exc)}") from None
        raise AssertionError("unreachable: the last address returns or raises")

    async def _send(self, request: httpx.Request, url: httpx.URL) -> str | bytes:
        """Stream one response: a redirect's Location, or the body read under the byte cap."""
        limit = self.settings.max_bytes
        too_large = f"the image at {_show(str(url))!r} is larger than {limit} bytes"
        response = await self._client.send(request, stream=True)
        try:
            status = response.status_code
            if status in _REDIRECTS and "location" in response.headers:
                return response.headers["location"]
            if not 200 <= status < 300:
                raise UrlFetchFailed(f"{_show(str(url))!r} answered HTTP {status}")
            if response.headers.get("content-encoding", "identity").lower() != "identity":
                raise UrlFetchFailed(f"{_show(str(url))!r} sent a compressed body")
            declared = response.headers.get("content-length", "")
            if declared.isascii() and declared.isdecimal() and int(declared) > limit:
                raise PayloadTooLarge(too_large)  # refuse before reading a byte of it
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge(too_large)
            return bytes(body)
        finally:
            await response.aclose()


def _reason(exc: httpx.HTTPError) -> str:
    """A short, fixed description of a transport failure (no server-controlled text)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connecting timed out"
    if isinstance(exc, httpx.TimeoutException):
        return "the server was too slow to answer"
    return f"transport error ({type(exc).__name__})"
