"""Why a send got no HTTP answer: the client error behind it, as a precise ``error`` class for
the audit row (``dns_not_found``, ``tls_certificate_invalid``, ``connection_reset``,
``timeout_connect`` ...), the metrics reason (one of the documented few), whether retrying can
help, and a short ``error_detail`` text (the host and the system's own words for it).

aiohttp wraps the cause once or twice (a connector error around an OSError, a certificate
error around an ``ssl`` error); the classes below look at the whole chain, most specific
first, the way Alertmanager's notifiers tell a TLS failure from a refused connection.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import aiohttp

from air_relay.redaction import redact_forms
from air_relay.sinks.egress_guard import refused_in

DNS_NOT_FOUND = "dns_not_found"
# The audit row keeps this many characters of the detail: enough for a host and a reason.
ERROR_DETAIL_LIMIT = 300

# getaddrinfo's "no such name" answers (EAI_NODATA: the name exists without an address).
_NOT_FOUND = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)
_UNREACHABLE = {errno.EHOSTUNREACH: "host_unreachable", errno.ENETUNREACH: "network_unreachable"}


@dataclass(frozen=True)
class Failure:
    """A classified client error."""

    error: str
    reason: str  # the metrics reason: timeout | connection_error | other
    transient: bool
    detail: str


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (aiohttp's ``certificate_error``/``os_error``, causes)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        nested = getattr(current, "certificate_error", None) or getattr(current, "os_error", None)
        current = nested if isinstance(nested, BaseException) else current.__cause__


def _words(exc: BaseException) -> str:
    """The system's own words for the innermost cause."""
    inner = list(_chain(exc))[-1]
    if isinstance(inner, ssl.SSLCertVerificationError) and inner.verify_message:
        return f"certificate verify failed: {inner.verify_message}"
    plain_os = not isinstance(inner, socket.gaierror | ssl.SSLError)
    if isinstance(inner, OSError) and plain_os and inner.errno:
        # The errno's own words: asyncio's strerror ("Connect call failed ...") says less.
        return os.strerror(inner.errno)
    if isinstance(inner, OSError) and inner.strerror:
        return str(inner.strerror)
    if isinstance(inner, aiohttp.ClientResponseError):
        return inner.message  # its str() holds the URL
    return str(inner) or type(inner).__name__


def _classify(exc: BaseException) -> tuple[str, str, bool]:  # noqa: C901 (one flat table)
    """(error, reason, transient) for a send that got no answer."""
    chain = list(_chain(exc))
    if any(isinstance(e, aiohttp.ClientConnectorCertificateError) for e in chain) or any(
        isinstance(e, ssl.SSLCertVerificationError) for e in chain
    ):
        return "tls_certificate_invalid", "connection_error", True
    if any(isinstance(e, aiohttp.ClientSSLError | ssl.SSLError) for e in chain):
        return "tls_error", "connection_error", True
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "timeout_connect", "timeout", True
    if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError):
        return "timeout_read", "timeout", True
    for e in chain:
        if isinstance(e, socket.gaierror):
            found = e.errno not in _NOT_FOUND
            return ("dns_error" if found else DNS_NOT_FOUND), "connection_error", True
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns_error", "connection_error", True
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection_refused", "connection_error", True
    if any(isinstance(e, ConnectionResetError) for e in chain):
        return "connection_reset", "connection_error", True
    if any(isinstance(e, TimeoutError) for e in chain):
        return "timeout_connect", "timeout", True
    for e in chain:
        if isinstance(e, OSError) and e.errno in _UNREACHABLE:
            return _UNREACHABLE[e.errno], "connection_error", True
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection_closed", "connection_error", True
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return "invalid_response", "other", True
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientOSError):
        return "connection_error", "connection_error", True
    return type(exc).__name__, "other", True


def error_detail(text: str, forms: Sequence[str] = ()) -> str:
    """``text`` for the audit row: credentials replaced by ``***``, one line, capped."""
    line = " ".join(redact_forms(text, forms).split())
    if len(line) > ERROR_DETAIL_LIMIT:
        line = line[: ERROR_DETAIL_LIMIT - 1] + "…"
    return line


_TIMEOUT_WORDS = {
    "timeout_connect": "no connection within the connect timeout",
    "timeout_read": "no complete answer within the delivery timeout",
}


def classify(exc: BaseException, forms: Sequence[str] = (), where: str = "") -> Failure:
    """The failure behind ``exc``. ``forms`` are the request's credentials to redact,
    ``where`` the ``host:port`` it went to (never the whole URL: it may hold a token)."""
    prefix = f"{where}: " if where else ""
    refused = refused_in(exc)
    if refused is not None:
        # Permanent: the sink's URL must change.
        detail = f"{refused.host} is a {refused.reason} address"
        return Failure("destination_not_allowed", "other", False, error_detail(detail, forms))
    if isinstance(exc, aiohttp.InvalidURL):
        return Failure("invalid_url", "other", False, "the URL is not usable")
    error, reason, transient = _classify(exc)
    words = _TIMEOUT_WORDS.get(error) if isinstance(exc, TimeoutError) else None
    return Failure(error, reason, transient, error_detail(prefix + (words or _words(exc)), forms))
