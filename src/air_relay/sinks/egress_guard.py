"""The egress guard (against SSRF): sink URLs must not reach the operator's own network.

Unless ``delivery.allow_private_destinations`` is true, a Webhook URL whose host is, or
resolves to, a loopback, private, link-local (169.254.0.0/16: cloud metadata), multicast,
unspecified or otherwise non-global address is refused: once when the sink is created or
changed, and again on every send, because DNS can change after the check.

The guard judges the host exactly as the HTTP client will: URLs are parsed and normalised
with ``yarl`` (aiohttp's own parser, UTS-46 IDNA), never with ``urllib``, whose IDNA-2003
codec reads some hosts differently (Unicode digits that yarl turns into an IP literal). At
send time two checks sit inside the client: the resolver refuses names that resolve to a
forbidden address, and the socket factory refuses to open a socket to one, whatever the
host was written as. Name lookups run on a small executor of their own with a timeout, so
names whose DNS hangs cannot starve other lookups.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.helpers import is_ip_address
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 prefix that carries an IPv4 address in its last 32 bits (RFC 6052 NAT64).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
RESOLVE_TIMEOUT_SECONDS = 3.0
# Threads for name lookups of sink hosts, not the event loop's default executor that
# everything else shares. One name never holds more than one of them (see Lookups).
LOOKUP_THREADS = 16

AddrInfo = tuple[Any, ...]
# (host, port) -> the getaddrinfo() results for it
Lookup = Callable[[str, int], Awaitable[list[AddrInfo]]]


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


class Lookups:
    """getaddrinfo on a bounded executor of its own, each wait with a timeout.

    A lookup that times out keeps its thread until the system resolver gives up, so lookups
    of one name share one thread: while a lookup of a name runs, every other caller asking
    for it waits for that one. Names whose DNS hangs hold one thread each, not one per send.
    """

    def __init__(
        self, threads: int = LOOKUP_THREADS, timeout: float = RESOLVE_TIMEOUT_SECONDS
    ) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="air-relay-dns")
        self._timeout = timeout
        self._running: dict[tuple[str, int, int], asyncio.Future[list[AddrInfo]]] = {}

    async def __call__(
        self, host: str, port: int, family: int = socket.AF_UNSPEC
    ) -> list[AddrInfo]:
        key = (host, port, family)
        future = self._running.get(key)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, socket.getaddrinfo, host, port, family, socket.SOCK_STREAM
            )
            self._running[key] = future
            future.add_done_callback(lambda done: self._finished(key, done))
        try:
            # shield: one caller's timeout must not cancel the lookup others wait for.
            return await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError:
            raise socket.gaierror(socket.EAI_AGAIN, f"lookup of {host} timed out") from None

    def _finished(self, key: tuple[str, int, int], done: asyncio.Future[list[AddrInfo]]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have timed out already

    def close(self) -> None:
        # A lookup that hangs keeps its thread; do not wait for it.
        self._executor.shutdown(wait=False, cancel_futures=True)


async def check_url(url: str, lookup: Lookup) -> None:
    """The create/update check: the host as the client reads it, then every address it
    resolves to.

    A name that does not resolve now (no such name, a lookup that fails or times out) is let
    through on purpose: it reaches nothing yet, and a sink can be set up before its DNS. That
    is safe only because every send is checked again inside the client, on the addresses
    actually connected to (``GuardedResolver`` and ``guarded_socket``).
    """
    parsed = URL(url)
    host = parsed.raw_host or ""
    if is_ip_address(host):
        check_addresses(host, [host])
        return
    try:
        infos = await lookup(host, parsed.port or 443)
    except (OSError, UnicodeError):
        return
    check_addresses(host, [str(info[4][0]) for info in infos])


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for Webhook sessions: lookups on the bounded executor, and names
    that resolve to a forbidden address refused."""

    def __init__(self, lookups: Lookups | None = None) -> None:
        self._owned = lookups is None
        self._lookups = lookups or Lookups()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await self._lookups(host, port, family)
        results: list[ResolveResult] = [
            {
                "hostname": host,
                "host": str(address[0]),
                "port": int(address[1]),
                "family": fam,
                "proto": proto,
                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            }
            for fam, _, proto, _, address in infos
            if fam in (socket.AF_INET, socket.AF_INET6)
        ]
        if not results:
            raise OSError(f"{host} has no usable address")
        check_addresses(host, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        if self._owned:
            self._lookups.close()


def guarded_socket(addr_info: AddrInfo) -> socket.socket:
    """The socket factory of Webhook sessions: the last check, on the very address a
    connection is about to be opened to (IP literals never reach a resolver)."""
    family, type_, proto, _, address = addr_info
    host = str(address[0])
    check_addresses(host, [host])
    return socket.socket(family=family, type=type_, proto=proto)


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
