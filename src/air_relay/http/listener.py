"""The listening side of the HTTP server: its sockets, a connection cap, and time limits on
slow clients, in front of aiohttp's own request handling.

aiohttp has no header timeout: a client that sends one header byte every few seconds holds its
connection (and a file descriptor) for as long as it likes, and so does one that trickles a
body. ``GuardedSite`` accepts connections itself, so it can count them and refuse any over
``server.max_connections`` at once (accepted and closed, before any TLS handshake or parsing),
and wraps each aiohttp request handler in a ``_Guard`` that sees every byte and the start and
end of every request (through ``errors.error_middleware``):

* headers: the request line and headers must be complete ``header_timeout_seconds`` after the
  connection opened, or after the first byte of a following request on a kept-alive
  connection (the TLS handshake gets as long again, before that);
* body: a body may take ``body_timeout_seconds`` plus one second per
  ``body_min_bytes_per_second`` bytes received (Apache's mod_reqtimeout rule), so a large body
  sent at a steady rate is never cut while a trickle is;
* an idle kept-alive connection is closed by aiohttp after ``keepalive_timeout_seconds``.

A connection that runs out of time is aborted (nothing is written: a slow client is not
waiting for an answer, and no response may be half-written on it).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiohttp import web

from air_relay.config import ServerConfig
from air_relay.metrics import Metrics

log = structlog.get_logger(__name__)

# Pending connections the kernel queues while the accept loop catches up; a burst of a thousand
# connections must not overflow it (an overflow costs a client a SYN retransmit, 1 s or more).
LISTEN_BACKLOG = 1024
# Connections taken off the queue per wake-up, at most.
ACCEPT_BATCH = 128
# accept() failing for lack of file descriptors or memory: wait a little rather than spin.
_ACCEPT_PAUSE_SECONDS = 0.5
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# On stop, how long connections accepted just before may take to start their request.
FIRST_REQUEST_GRACE_SECONDS = 2.0
# The connection_limit_reached warning is logged at most this often, with a count.
LIMIT_LOG_INTERVAL_SECONDS = 60.0

_HEADERS, _BODY, _BUSY, _IDLE = "headers", "body", "busy", "idle"


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking TCP sockets for ``host`` (every address it resolves to,
    as asyncio's create_server would bind them)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # One socket per family, as asyncio does: "::" must not also claim IPv4.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Slot:
    """One counted connection; released once, whichever way the connection ends."""

    __slots__ = ("_site", "released")

    def __init__(self, site: GuardedSite) -> None:
        self._site = site
        self.released = False
        site.open_connections += 1
        if site.metrics is not None:
            site.metrics.http_connections.inc()

    def release(self) -> None:
        """Idempotent: a connection can end through more than one path."""
        if self.released:
            return
        self.released = True
        self._site.open_connections -= 1
        if self._site.metrics is not None:
            self._site.metrics.http_connections.dec()


class _Guard(asyncio.Protocol):
    """The protocol the transport talks to: forwards everything to aiohttp's request handler
    and keeps the header and body clocks (see the module docstring)."""

    def __init__(
        self, inner: asyncio.Protocol, limits: ServerConfig, site: GuardedSite, slot: _Slot
    ) -> None:
        self._inner = inner
        self._limits = limits
        self._site = site
        self._slot = slot
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._state = _HEADERS
        self._body: Any = None  # the current request's payload stream while its body arrives
        self._body_started = 0.0
        self._body_bytes = 0
        self._request_done = False
        # Why this guard closed the connection ("headers" or "body"), if it did.
        self.closed_for: str | None = None

    # --- asyncio.Protocol, forwarded ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport instance (uvloop's are
        # not registered as one).
        self._transport = cast(asyncio.Transport, transport)
        self._site.fresh.add(self)
        self._inner.connection_made(transport)
        self._start_headers()

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE and data:
            self._start_headers()  # the first byte of the next request on this connection
        elif self._state == _BODY:
            self._body_bytes += len(data)
        self._inner.data_received(data)
        if self._state == _BODY and self._body is not None and self._body.is_eof():
            self._body_done()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._site.fresh.discard(self)
        self._cancel_timer()
        self._body = None
        self._transport = None
        self._slot.release()
        self._inner.connection_lost(exc)

    # --- the request's life, from errors.error_middleware -----------------------------------

    def request_started(self, request: web.BaseRequest) -> None:
        self._site.fresh.discard(self)
        self._cancel_timer()
        self._request_done = False
        body = request.content
        if body.is_eof():
            self._state = _BUSY
            return
        self._state = _BODY
        self._body = body
        self._body_started = self._loop.time()
        self._body_bytes = 0
        self._timer = self._loop.call_at(self._body_deadline(), self._check_body)

    def request_finished(self) -> None:
        self._request_done = True
        if self._state == _BUSY:
            self._state = _IDLE
        # In _BODY (answered before the body was read), the body clock runs on while aiohttp
        # reads and discards the rest of it.

    # --- clocks ------------------------------------------------------------------------------

    def _start_headers(self) -> None:
        self._cancel_timer()
        self._state = _HEADERS
        self._timer = self._loop.call_later(self._limits.header_timeout_seconds, self._too_slow)

    def _body_deadline(self) -> float:
        limits = self._limits
        allowance = (
            limits.body_timeout_seconds + self._body_bytes / limits.body_min_bytes_per_second
        )
        return self._body_started + allowance

    def _check_body(self) -> None:
        self._timer = None
        if self._state != _BODY:
            return
        if self._body is not None and self._body.is_eof():
            self._body_done()
            return
        deadline = self._body_deadline()
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check_body)
            return
        self._too_slow()

    def _body_done(self) -> None:
        self._cancel_timer()
        self._body = None
        self._state = _IDLE if self._request_done else _BUSY

    def _too_slow(self) -> None:
        self._timer = None
        phase = self._state
        if phase not in (_HEADERS, _BODY) or self._transport is None:
            return
        self.closed_for = phase
        if self._site.metrics is not None:
            self._site.metrics.slow_connections_closed.labels(phase).inc()
        peer = self._transport.get_extra_info("peername")
        log.debug("slow_client_closed", phase=phase, peer=str(peer))
        self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def guard_of(request: web.BaseRequest) -> _Guard | None:
    """The guard of the request's connection; None on one that is not guarded (such as the
    test client's). ``errors.error_middleware`` tells it when each request starts and ends."""
    transport = request.transport
    guard = transport.get_protocol() if transport is not None else None
    return guard if isinstance(guard, _Guard) else None


@dataclass
class _LimitNotice:
    refused: int = 0
    logged_at: float = float("-inf")


class GuardedSite(web.BaseSite):
    """An aiohttp site on sockets it was given, with its own accept loop (see the module
    docstring). ``ssl_context`` makes it serve HTTPS."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sockets: list[socket.socket],
        limits: ServerConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sockets = sockets
        self._limits = limits
        self.metrics = metrics
        self.open_connections = 0
        self._accepting = False
        self._resume: asyncio.TimerHandle | None = None  # after an accept() failure
        self._handshakes: set[asyncio.Task[None]] = set()
        # Connections that have not started a request yet (see stop).
        self.fresh: set[_Guard] = set()
        self._notice = _LimitNotice()

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host, port = self._sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        self._accepting = True
        self._watch()

    def _watch(self) -> None:
        # A reader callback, not a task awaiting sock_accept(): stopping it can never drop a
        # connection already taken off the queue (a cancelled sock_accept() can).
        self._resume = None
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _unwatch(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.remove_reader(sock.fileno())

    async def stop(self) -> None:
        """Stop accepting and close the listening sockets; connections already open are left
        to the runner's shutdown, which follows.

        First, connections accepted just now get a moment to start their request: the client
        has sent it or is about to, and aiohttp's shutdown closes a connection that has not
        started one, which that client would see as a failed request. With the socket kept
        open elsewhere (socket activation), new connections wait for the next process, so a
        restart fails no request."""
        if self._accepting:
            self._accepting = False
            self._unwatch()
        if self._resume is not None:
            self._resume.cancel()
        for sock in self._sockets:
            sock.close()
        grace = min(FIRST_REQUEST_GRACE_SECONDS, self._limits.header_timeout_seconds)
        deadline = asyncio.get_running_loop().time() + grace
        while (self._handshakes or self.fresh) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for task in list(self._handshakes):
            task.cancel()  # a TLS handshake still going on: aiohttp has not seen it yet
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        await super().stop()

    def _accept(self, listener: socket.socket) -> None:
        """Take what the queue holds (a bounded batch, so the loop stays responsive)."""
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                    continue  # ECONNABORTED and the like: the client gave up, take the next
                # Out of file descriptors or memory: the queue keeps the rest for later.
                log.error("accept_failed", error=f"{type(exc).__name__}: {exc}")
                self._unwatch()
                loop = asyncio.get_running_loop()
                self._resume = loop.call_later(_ACCEPT_PAUSE_SECONDS, self._watch)
                return
            if self.open_connections >= self._limits.max_connections:
                self._refuse(conn)
                continue
            # Counted now, not when the connection task runs: a burst is accepted before any
            # of them runs, and must not overshoot the cap.
            task = asyncio.create_task(self._connect(conn, _Slot(self)))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _refuse(self, conn: socket.socket) -> None:
        # The cheapest answer: no handshake, no parsing. Connections already open carry on.
        conn.close()
        if self.metrics is not None:
            self.metrics.http_connections_refused.inc()
        notice = self._notice
        notice.refused += 1
        now = time.monotonic()
        if now - notice.logged_at >= LIMIT_LOG_INTERVAL_SECONDS:
            log.warning(
                "connection_limit_reached",
                max_connections=self._limits.max_connections,
                refused=notice.refused,
            )
            notice.refused = 0
            notice.logged_at = now

    async def _connect(self, conn: socket.socket, slot: _Slot) -> None:
        """Hand an accepted socket to aiohttp behind a guard (TLS handshake first, if any)."""
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def protocol() -> _Guard:
            return _Guard(server(), self._limits, self, slot)

        conn.setblocking(False)
        try:
            await loop.connect_accepted_socket(
                protocol,
                conn,
                ssl=self._ssl_context,
                ssl_handshake_timeout=(
                    self._limits.header_timeout_seconds if self._ssl_context else None
                ),
            )
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError) as exc:
            # A failed or abandoned handshake: the guard's connection_lost never comes.
            slot.release()
            conn.close()  # asyncio has closed it already when it made a transport
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.debug("handshake_failed", error=f"{type(exc).__name__}: {exc}")
