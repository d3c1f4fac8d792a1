"""The egress guard (against SSRF): sink URLs must not reach the operator's own network.

Unless ``delivery.allow_private_destinations`` is true, a Webhook URL whose host is, or
resolves to, a loopback, private, link-local (169.254.0.0/16: cloud metadata), multicast,
unspecified or otherwise non-global address is refused: once when the sink is created or
changed, and again on every send, because DNS can change after the check. The send-time
check sits in the HTTP client's resolver, so the address checked is the address connected
to (no window for DNS rebinding between a check and the connection).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 prefix that carries an IPv4 address in its last 32 bits (RFC 6052 NAT64).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
RESOLVE_TIMEOUT_SECONDS = 3.0


class DestinationRefused(OSError):
    """A destination the guard refuses; an OSError so aiohttp reports it as a connect error."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host} is a {reason} address")
        self.host = host
        self.reason = reason


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not an allowed destination (``loopback``, ``private`` ...), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None and (reason := refusal(embedded)):
            return reason
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        # Carrier-grade NAT, documentation, benchmarking, reserved ranges ...
        ("reserved", ip.is_reserved or not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is written as one (brackets and zone id allowed)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    """Raise DestinationRefused if any address of ``host`` is refused (all must be allowed:
    a client may connect to any of them)."""
    for text in addresses:
        ip = literal_address(text)
        reason = "unparseable" if ip is None else refusal(ip)
        if reason:
            raise DestinationRefused(host, reason)


def check_literal(url: str) -> None:
    """The send-time check for a host written as an IP address (no DNS lookup involved)."""
    host = urlsplit(url).hostname or ""
    if literal_address(host) is not None:
        check_addresses(host, [host])


async def check_url(url: str) -> None:
    """The create/update check: the host as written, then every address it resolves to.

    A name that does not resolve now is let through: it reaches nothing yet, and the
    send-time check applies when it does.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if literal_address(host) is not None:
        check_addresses(host, [host])
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM),
            RESOLVE_TIMEOUT_SECONDS,
        )
    except (OSError, TimeoutError, UnicodeError):
        return
    check_addresses(host, [str(info[4][0]) for info in infos])


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing names that resolve to a forbidden address."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        check_addresses(host, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        await self._inner.close()


def refused_in(exc: BaseException) -> DestinationRefused | None:
    """The DestinationRefused behind an aiohttp connect error, if that is what it was."""
    seen: Any = exc
    for _ in range(4):  # aiohttp wraps it once or twice
        if isinstance(seen, DestinationRefused):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__
        if seen is None:
            return None
    return None
