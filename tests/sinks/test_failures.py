"""Why an attempt failed: each way a send can get no answer has its own ``error`` class and a
short ``error_detail``, against real servers on 127.0.0.1 (a TLS server with an untrusted
certificate, a closed port, a server that resets, one that never answers, a full backlog),
and a name that does not exist through the resolver seam (nothing is looked up)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import trustme
from aiohttp import web
from structlog.testing import capture_logs

from air_relay.runtime import build_app
from air_relay.sinks.base import SendResult, exception_failure, post, send_timeout
from air_relay.sinks.egress_guard import GuardedResolver, Lookups
from air_relay.sinks.failures import ERROR_DETAIL_LIMIT, classify
from tests.support import (
    audit_rows,
    create_sink,
    free_port,
    make_config,
    post_event,
    wait_final,
)

EVENT = {"eventName": "CaseCreatedEvent", "organizationId": 1, "data": {"id": "c-1"}}


class NoSuchName(Lookups):
    """A lookup that answers "no such name" for every host, without asking any resolver."""

    def __init__(self) -> None:
        super().__init__(threads=1, timeout=1.0)
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int, family: int = socket.AF_UNSPEC) -> list[Any]:
        self.asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


async def send(
    url: str,
    *,
    timeout: float = 2.0,
    connect: float | None = None,
    connector: aiohttp.BaseConnector | None = None,
    secrets: tuple[str, ...] = (),
) -> SendResult:
    async with aiohttp.ClientSession(connector=connector) as session:
        return await post(
            session,
            url,
            body=b"{}",
            headers={"Content-Type": "application/json"},
            timeout=send_timeout(timeout, connect),
            secrets=secrets,
        )


async def answer_ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


@contextlib.asynccontextmanager
async def tcp_server(handler: Any, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


async def test_untrusted_certificate_is_tls_certificate_invalid(aiohttp_server: Any) -> None:
    ca = trustme.CA()  # a CA the client does not trust: as a self-signed receiver is
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    app = web.Application()
    app.router.add_post("/hook", answer_ok)
    server = await aiohttp_server(app, host="127.0.0.1", ssl=server_ctx)
    result = await send(f"https://127.0.0.1:{server.port}/hook")
    assert (result.ok, result.error, result.reason) == (
        False,
        "tls_certificate_invalid",
        "connection_error",
    )
    assert result.transient
    assert result.error_detail is not None
    assert result.error_detail.startswith(f"127.0.0.1:{server.port}: certificate verify failed")
    # The same server, trusted, answers: the class was about the certificate.
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    ok = await send(
        f"https://127.0.0.1:{server.port}/hook", connector=aiohttp.TCPConnector(ssl=client_ctx)
    )
    assert ok.ok


async def test_tls_to_a_plain_server_is_tls_error(aiohttp_server: Any) -> None:
    app = web.Application()
    app.router.add_post("/hook", answer_ok)
    server = await aiohttp_server(app, host="127.0.0.1")
    result = await send(f"https://127.0.0.1:{server.port}/hook")
    assert (result.error, result.reason, result.transient) == (
        "tls_error",
        "connection_error",
        True,
    )
    assert result.error_detail and result.error_detail.startswith(f"127.0.0.1:{server.port}: ")
    assert "wrong version number" in result.error_detail.lower()


async def test_closed_port_is_connection_refused() -> None:
    port = free_port()
    # Credentials in the URL never reach the detail (it names host and port only).
    result = await send(
        f"http://user:hunter2pass@127.0.0.1:{port}/hook?token=tok123456789",
        secrets=("hunter2pass", "tok123456789"),
    )
    assert (result.error, result.reason, result.transient) == (
        "connection_refused",
        "connection_error",
        True,
    )
    assert result.status_code is None
    assert result.error_detail is not None
    assert result.error_detail.startswith(f"127.0.0.1:{port}: ")
    assert "refused" in result.error_detail.lower()
    assert "hunter2pass" not in result.error_detail
    assert "tok123456789" not in result.error_detail


async def test_reset_after_the_request_is_connection_reset() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        # Linger 0: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with tcp_server(reset) as port:
        result = await send(f"http://127.0.0.1:{port}/hook")
    assert (result.error, result.reason, result.transient) == (
        "connection_reset",
        "connection_error",
        True,
    )
    assert result.error_detail == f"127.0.0.1:{port}: Connection reset by peer"


async def test_close_without_an_answer_is_connection_closed() -> None:
    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async with tcp_server(close) as port:
        result = await send(f"http://127.0.0.1:{port}/hook")
    assert (result.error, result.reason) == ("connection_closed", "connection_error")


async def test_no_answer_is_timeout_read() -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()
        writer.close()

    async with tcp_server(silent) as port:
        result = await send(f"http://127.0.0.1:{port}/hook", timeout=0.3, connect=0.2)
        done.set()
    assert (result.error, result.reason, result.transient) == ("timeout_read", "timeout", True)
    assert result.error_detail == (
        f"127.0.0.1:{port}: no complete answer within the delivery timeout"
    )


async def test_full_backlog_is_timeout_connect() -> None:
    # A listening socket that never accepts, its backlog filled: the next SYN goes unanswered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        result = await send(f"http://127.0.0.1:{port}/hook", timeout=2.0, connect=0.3)
    finally:
        for s in [*fillers, listener]:
            s.close()
    if result.error == "connection_refused":  # pragma: no cover - a kernel that refuses
        pytest.skip("this kernel refuses connections beyond the backlog instead of dropping")
    assert (result.error, result.reason, result.transient) == ("timeout_connect", "timeout", True)
    assert result.error_detail == f"127.0.0.1:{port}: no connection within the connect timeout"


async def test_name_that_does_not_exist_is_dns_not_found() -> None:
    lookups = NoSuchName()
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(lookups))
    try:
        result = await send("http://sink.example.invalid:8443/hook", connector=connector)
    finally:
        lookups.close()
    assert lookups.asked == ["sink.example.invalid"]  # the seam, not a resolver, answered
    assert (result.error, result.reason, result.transient) == (
        "dns_not_found",
        "connection_error",
        True,
    )
    assert result.error_detail == "sink.example.invalid:8443: Name or service not known"


def test_classifier_table() -> None:
    """Causes no local server produces on demand, classified from aiohttp's own errors."""
    key = aiohttp.client_reqrep.ConnectionKey("h.example", 443, True, True, None, None, None)
    cases: list[tuple[BaseException, str, str]] = [
        (aiohttp.ConnectionTimeoutError("x"), "timeout_connect", "timeout"),
        (aiohttp.SocketTimeoutError("x"), "timeout_read", "timeout"),
        (TimeoutError(), "timeout_read", "timeout"),
        (
            aiohttp.ClientConnectorDNSError(key, socket.gaierror(socket.EAI_AGAIN, "Try again")),
            "dns_error",
            "connection_error",
        ),
        (
            aiohttp.ClientConnectorError(key, OSError(errno.EHOSTUNREACH, "No route to host")),
            "host_unreachable",
            "connection_error",
        ),
        (
            aiohttp.ClientConnectorError(key, OSError(errno.ETIMEDOUT, "Connection timed out")),
            "timeout_connect",
            "timeout",
        ),
        (aiohttp.ClientPayloadError("cut"), "invalid_response", "other"),
        (aiohttp.InvalidURL("http://x y"), "invalid_url", "other"),
    ]
    for exc, error, reason in cases:
        failure = classify(exc)
        assert (failure.error, failure.reason) == (error, reason), exc
        assert failure.transient is (error != "invalid_url")
    # The detail is one line, redacted and capped.
    long = aiohttp.ClientConnectorError(key, OSError(errno.ECONNRESET, "s3cr3t-word\n" * 100))
    detail = exception_failure(long, ["s3cr3t-word"], "h.example:443").error_detail
    assert detail is not None
    assert len(detail) <= ERROR_DETAIL_LIMIT
    assert "\n" not in detail
    assert "s3cr3t-word" not in detail


# --- through the relay: the audit row and the log line ---------------------------------------


async def test_audit_row_and_log_line_carry_class_and_detail(
    make_relay: Any, db: asyncpg.Connection
) -> None:
    relay = await make_relay(delivery={"retry": {"attempts_per_claim": 1, "schedule_seconds": []}})
    port = free_port()
    sink = await create_sink(relay, {"Webhook": {"url": f"http://127.0.0.1:{port}/x"}})
    with capture_logs() as logs:
        await post_event(relay, EVENT)
        await wait_final(db)
    (row,) = await audit_rows(relay)
    assert row["event_sink_id"] == sink["id"]
    assert row["error"] == "connection_refused"
    assert row["error_detail"].startswith(f"127.0.0.1:{port}: ")
    assert row["response_body"] is None
    (line,) = [e for e in logs if e["event"] == "delivery_failed"]
    assert (line["error"], line["error_detail"]) == ("connection_refused", row["error_detail"])


async def relay_without_dns(
    aiohttp_client: Any, db_dsn: str, tmp_path: Any, **delivery: Any
) -> Any:
    """A relay whose sink host lookups all answer "no such name" (the guard on, so sends go
    through the guarded resolver)."""
    cfg = make_config(
        state_dir=str(tmp_path / "state"),
        delivery={
            "allow_private_destinations": False,
            "retry": {"attempts_per_claim": 2, "schedule_seconds": [0.05, 0.05]},
            **delivery,
        },
    )
    return await aiohttp_client(build_app(cfg, db_dsn, lookups=NoSuchName))


@pytest.mark.parametrize(("permanent", "attempts"), [(False, 6), (True, 2)])
async def test_dns_not_found_is_permanent_only_when_opted_in(
    aiohttp_client: Any,
    db_dsn: str,
    db: asyncpg.Connection,
    tmp_path: Any,
    permanent: bool,
    attempts: int,
) -> None:
    relay = await relay_without_dns(
        aiohttp_client, db_dsn, tmp_path, dns_not_found_is_permanent=permanent
    )
    await create_sink(relay, {"Webhook": {"url": "https://sink.example.invalid/hook"}})
    await post_event(relay, EVENT)
    await wait_final(db)
    rows = await audit_rows(relay)
    # Off: the whole schedule (3 claims of 2 attempts); on: one claim, then dead.
    assert len(rows) == attempts
    assert {r["error"] for r in rows} == {"dns_not_found"}
    assert {r["error_detail"] for r in rows} == {
        "sink.example.invalid:443: Name or service not known"
    }
    assert (await db.fetchval("SELECT status FROM deliveries")) == "dead"
